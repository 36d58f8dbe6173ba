"""The study config: YAML in, validated pydantic model, resolved YAML out.

Study-level settings are declared here; each registered method adds its own section
(``probe:``, ``lora_prompt:``, ...) from its config model in ``calibtune.methods``.
Nothing here imports torch: reading and checking a config is cheap.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from calibtune.costs import DEFAULT_TOKEN_BUDGET
from calibtune.errors import CalibtuneError, first_line
from calibtune.methods import MATRIX_METHODS, METHODS
from calibtune.prompts import DEFAULT_PROMPT, PROMPT_FIELDS, prompt_fields
from calibtune.settings import Settings as _Strict
from calibtune.settings import suggest as _suggest

GRADER_NAMES = ("exact", "contains", "numeric", "judge")


class Selection(_Strict):
    """A slice of one question set: ``questions[start:stop]``, then an optional seeded sample; or a named mix
    of sets (``mix: paper``, ``size``: at most this many questions, an equal share of each set)."""

    dataset: str | None = None
    split: str | None = None
    subjects: list[str] | None = None
    start: int = Field(0, ge=0)
    stop: int | None = Field(None, ge=0)
    sample: int | None = Field(None, ge=1, description="draw this many at random (seeded) from the slice")
    mix: Literal["paper"] | None = Field(None, description="paper: every bundled multiple-choice set but MMLU, "
                                         "every split, less the evaluation questions (the paper's all_20k_uniform)")
    size: int | None = Field(None, ge=1, description="questions in the mix: an equal share per set")

    @model_validator(mode="after")
    def _one_source(self) -> Selection:
        if (self.dataset is None) == (self.mix is None):
            raise ValueError("a selection names either a dataset or a mix")
        if self.mix is not None and (self.split or self.subjects or self.start or self.stop or self.sample):
            raise ValueError("a mix takes size only (it draws from every split of its sets)")
        if self.mix is None and self.size is not None:
            raise ValueError("size is for a mix; to take part of a set use stop or sample")
        return self


class FeatureSettings(_Strict):
    """Which hidden states the probe reads."""

    layers: Literal["auto"] | list[int] = "auto"  # auto: 1/4, 1/2, 3/4 of the depth and the last layer
    token: Literal["last", "mean"] = "last"


class JudgeSettings(_Strict):
    """The language-model judge: a local model, or an OpenAI-compatible chat endpoint."""

    model: str | None = Field(None, description="a model calibtune can load (local judge)")
    base_url: str | None = Field(None, description="an OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    api_model: str | None = Field(None, description="the endpoint's model name")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key (never saved)")
    timeout: float = Field(30.0, gt=0)
    max_retries: int = Field(5, ge=0)
    max_new_tokens: int = Field(8, ge=1, description="a local judge's reply length")


class OpenEndedSettings(_Strict):
    """How open-ended answers are generated and graded."""

    max_new_tokens: int = Field(24, ge=1)
    shots: int = Field(0, ge=0, description="k-shot exemplars put before each question")
    exemplars: Selection | None = Field(None, description="where the exemplars come from (disjoint from the "
                                        "study's questions)")
    chat_template: bool = Field(False, description="use the answering model's chat template (instruct models)")
    grader: str = "contains"
    judge: JudgeSettings | None = None

    @field_validator("grader")
    @classmethod
    def _known_grader(cls, grader: str) -> str:
        if grader not in GRADER_NAMES:
            raise ValueError(f"unknown grader '{grader}'{_suggest(grader, GRADER_NAMES)}; known: "
                             f"{', '.join(GRADER_NAMES)}")
        return grader


class ReportSettings(_Strict):
    """How metrics are summarised: bootstrap resamples, interval level, calibration bins."""

    bootstrap_resamples: int = Field(1000, ge=10)
    level: float = Field(0.95, gt=0, lt=1)
    bins: int = Field(10, ge=1, description="bins of ECE (equal-width and equal-mass), MCE and reliability diagrams")


class QuickSettings(_Strict):
    """How ``--quick`` shrinks the study: at most this many questions per selection, and adapters trained for
    a few steps on as many answers as those steps take."""

    train_per_set: int = 40
    eval_per_set: int = 40
    adapter_steps: int = 4


class _StudySettings(_Strict):
    """The study-level settings; ``StudyConfig`` adds one section per registered method."""

    name: str = "study"
    seed: int = 0
    task: Literal["multiple_choice", "open_ended"] = "multiple_choice"
    models: list[str] = Field(min_length=1)
    dtype: str = "auto"
    device: str = "auto"
    batch_size: int = Field(64, ge=1, description="sequences per forward pass, at most")
    token_budget: int = Field(DEFAULT_TOKEN_BUDGET, ge=16,
                              description="tokens per forward pass (padding included), at most; on a GPU raise it "
                              "(configs/paper-7b.yaml: 8192)")
    prompt: str = DEFAULT_PROMPT
    option_prefix: str = " "
    select: Literal["mean", "sum"] = "mean"
    train: list[Selection] = Field(min_length=1)
    eval: list[Selection] = Field(min_length=1)
    calibrate: list[Selection] = Field(
        default_factory=list, description="a calibration set: questions drawn like the evaluation set (leaving out "
        "the training and evaluation questions before any sample), answered and scored by every cell like the "
        "evaluation questions; every cell's temperature scaling is fitted on them. Empty: on each method's held-out "
        "training answers")
    methods: list[str] = Field(default_factory=lambda: ["probe", "option_confidence"])
    heatmap: list[str] = Field(default_factory=lambda: ["probe", "lora_prompt"],
                               description="matrix methods drawn as heatmap panels (those that ran)")
    features: FeatureSettings = FeatureSettings()
    train_sizes: list[int | Literal["all"]] | None = Field(
        None, description="a data-scale study: every cell trained on nested seeded subsets of the training "
        "questions of these sizes (all: every one), scored on the same evaluation questions")
    zero_shot_calibration: int = Field(200, ge=0, description="training answers used to fit the temperature of "
                                       "methods that hold none out (zero-shot query, verbalized, sampling)")
    temperature_scaling: bool = True
    cell_processes: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="in a run of several processes, how many train one adapter cell together "
        "(data-parallel); auto: one each while there are at least as many cells to train as processes, "
        "else as many as leave none idle; with adapter_sharding: fsdp, all of them")
    adapter_sharding: Literal["replicate", "fsdp"] = Field(
        "replicate", description="how processes that train one adapter cell together hold the model: replicate "
        "(a whole copy each, gradients all-reduced, as DDP) or fsdp (each decoder layer's weights sharded over "
        "them, PyTorch FSDP, for a model whose training does not fit one device)")
    open_ended: OpenEndedSettings = OpenEndedSettings()
    report: ReportSettings = ReportSettings()
    quick: QuickSettings = QuickSettings()

    @model_validator(mode="after")
    def _methods_fit_the_task(self) -> Any:
        for name in self.methods:
            if self.task not in METHODS[name].tasks:
                raise ValueError(f"method '{name}' does not apply to task {self.task}")
        judge = self.open_ended.judge
        if self.task == "open_ended" and self.open_ended.grader == "judge":
            if judge is None or not (judge.model or (judge.base_url and judge.api_model)):
                raise ValueError("grader 'judge' needs open_ended.judge.model, or open_ended.judge.base_url "
                                 "and open_ended.judge.api_model")
        if self.open_ended.shots and self.open_ended.exemplars is None:
            raise ValueError("open_ended.shots needs open_ended.exemplars (where the exemplars come from)")
        return self

    @field_validator("models")
    @classmethod
    def _distinct_models(cls, models: list[str]) -> list[str]:
        repeated = [m for i, m in enumerate(models) if m in models[:i]]
        if repeated:
            raise ValueError(f"model '{repeated[0]}' is listed twice")
        return models

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        for method in methods:
            if method not in METHODS:
                raise ValueError(f"unknown method '{method}'{_suggest(method, list(METHODS))}; known: "
                                 f"{', '.join(METHODS)}")
        return methods

    @field_validator("heatmap")
    @classmethod
    def _matrix_methods_only(cls, methods: list[str]) -> list[str]:
        for method in methods:
            if method not in MATRIX_METHODS:
                raise ValueError(f"heatmap method '{method}'{_suggest(method, MATRIX_METHODS)} is not a matrix "
                                 f"method; use {', '.join(MATRIX_METHODS)}")
        return methods

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"study name '{name}' must be a plain name, not a path")
        return name

    @field_validator("prompt")
    @classmethod
    def _prompt_has_question(cls, prompt: str) -> str:
        try:
            fields = prompt_fields(prompt)
        except ValueError as err:
            raise ValueError(f"prompt is not a valid template ({err}); write a literal brace as {{{{ or }}}}") from None
        unknown = sorted(set(fields) - set(PROMPT_FIELDS))
        if unknown:
            raise ValueError(f"prompt has the unknown field {{{unknown[0]}}}: it may use "
                             + " and ".join(f"{{{f}}}" for f in PROMPT_FIELDS))
        if "question" not in fields:
            raise ValueError("prompt must contain the field {question}")
        return prompt


StudyConfig = create_model(
    "StudyConfig", __base__=_StudySettings, __module__=__name__,
    __doc__="A whole cross-model study: the study-level settings and a section per registered method.",
    **{name: (method.config, method.config()) for name, method in METHODS.items() if method.config is not None},
)


def method_settings(config: StudyConfig, name: str) -> _Strict | None:
    """A method's own section of the config (None for a method without settings)."""
    return getattr(config, name) if METHODS[name].config is not None else None


def _explain(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        key = str(first["loc"][-1])
        model: type[BaseModel] = StudyConfig
        for part in first["loc"][:-1]:
            field = model.model_fields.get(str(part)) if isinstance(part, str) else None
            annotation = getattr(field, "annotation", None) if field else None
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                model = annotation
            elif annotation is not None and hasattr(annotation, "__args__"):
                inner = [a for a in annotation.__args__ if isinstance(a, type) and issubclass(a, BaseModel)]
                model = inner[0] if inner else model
        return f"{source}: unknown key '{where}'{_suggest(key, list(model.model_fields))}"
    message = first["msg"].removeprefix("Value error, ")
    return f"{source}: {where or 'config'}: {message}"


def load_config(path: Path | None) -> StudyConfig:
    """Read and validate a study config; ``None`` means the bundled default study."""
    if path is None:
        text = resources.files("calibtune").joinpath("configs/default.yaml").read_text()
        source = "default.yaml"
    else:
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise CalibtuneError(f"config file {path} does not exist") from exc
        except UnicodeDecodeError as exc:
            raise CalibtuneError(f"config file {path} is not UTF-8 text") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CalibtuneError(f"{source}: not valid YAML ({first_line(exc)})") from exc
    if not isinstance(data, dict):
        raise CalibtuneError(f"{source}: a study config must be a mapping of settings")
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise CalibtuneError(_explain(exc, source)) from exc


def dump_config(config: StudyConfig) -> str:
    """The resolved config as YAML (every default written out)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def cell_processes(setting: int | str, processes: int, cells: int, sharded: bool = False) -> int:
    """How many processes train one adapter cell together: the setting, or for ``auto`` one while there are at
    least as many cells to train as processes, else as many as leave none idle (8 processes, 3 cells: 2); with
    ``sharded`` weights (FSDP, for a model whose training does not fit one device), ``auto`` is every process."""
    if setting != "auto":
        return max(1, min(int(setting), processes))
    if sharded:
        return processes
    return max(1, processes // max(1, cells))
