"""EvalSpec: what `lmtailor eval` runs, validated once at the door (YAML, flags or a JSON body)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lmtailor.specs import EVAL_METRIC_NAMES, JUDGE


class EvalSpec(BaseModel):
    """Models compared on one test set; the first model is the baseline. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    models: list[str] = Field(
        ...,
        min_length=1,
        description="catalog names, model folders, tuned models, or endpoints `openai:MODEL@BASE_URL`; "
        "the first is the baseline",
    )
    data: str = Field(..., description="test file: a prompt and a `reference` (or a final assistant turn)")
    format: Literal["auto", "chat", "alpaca", "sharegpt"] = Field("auto", description="data format")
    on_error: Literal["fail", "skip"] = Field("fail", description="bad rows stop the run, or are skipped")
    metrics: list[str] | None = Field(
        None,
        description="metric names (default: picked from the references: labels or free text; never judge)",
    )
    labels: list[str] | None = Field(
        None, description="classification labels (default: the distinct references)"
    )
    output: str | None = Field(None, description="output folder (default: <home>/evals/<time>)")
    max_new_tokens: int = Field(128, ge=1, description="longest answer in tokens")
    temperature: float = Field(0.0, ge=0, description="0 answers greedily; above 0 samples")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling (only when temperature > 0)")
    batch_size: int = Field(16, ge=1, description="prompts generated together")
    seed: int = Field(0, description="seed of sampling and of the bootstrap resamples")
    bootstrap: int = Field(1000, ge=100, description="bootstrap resamples for intervals and paired tests")
    cache: bool = Field(True, description="reuse answers cached for the same model, prompt and parameters")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="environment variable holding the key of `openai:` endpoints"
    )
    trust_remote_code: bool = Field(False, description="run code shipped with the model")
    retention: bool = Field(
        True,
        description="also measure retention for every model whose card names its base: the share of bundled "
        "general probes the base answered that the model still answers (evaluate/retention.py)",
    )
    judge_model: str | None = Field(
        None,
        description="the model that scores answers for metric judge: an endpoint `openai:MODEL@BASE_URL` "
        "(key from `api_key_env`) or a local model (catalog name, folder, tuned model)",
    )
    judge_rubric: str | None = Field(
        None,
        description="what the judge's 1-5 score means (default: how correct and complete the answer is "
        "against the reference)",
    )

    @field_validator("models")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        twice = sorted({m for m in value if value.count(m) > 1})
        if twice:
            raise ValueError(f"each model once: {', '.join(twice)} given twice")
        return value

    @field_validator("metrics")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        value = [v.strip() for v in value if v.strip()]
        unknown = [v for v in value if v not in EVAL_METRIC_NAMES]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(EVAL_METRIC_NAMES)}")
        return list(dict.fromkeys(value)) or None

    @field_validator("judge_model", "judge_rubric")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return (value.strip() or None) if value is not None else None

    @model_validator(mode="after")
    def _judge_needs_a_model(self) -> EvalSpec:
        if self.metrics and JUDGE in self.metrics and not self.judge_model:
            raise ValueError(
                "metric judge needs a judge model: --judge-model (spec key judge_model), "
                "e.g. openai:MODEL@BASE_URL or a local model"
            )
        return self
