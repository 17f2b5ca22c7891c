"""What every config section shares: unknown keys are refused by name, assignments validated.

    class DataConfig(Section): dir: Optional[str] = None
"""

from pydantic import BaseModel, ConfigDict

Range = tuple[float, float]


class Section(BaseModel):
    # Reject unknown keys by name (STYLE.md: accelerate's config dataclasses do the same).
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
