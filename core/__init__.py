"""The bottom layer: types every other layer may import; it imports none of launcher/, infra/, trainer/."""
