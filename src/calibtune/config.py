"""The study config: YAML in, validated pydantic model, resolved YAML out."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from calibtune.answer import DEFAULT_PROMPT
from calibtune.errors import CalibtuneError, first_line
from calibtune.estimators.adapters import LoraSettings, TrainSettings
from calibtune.estimators.lora_head import LoraHeadConfig
from calibtune.estimators.lora_prompt import LoraPromptConfig
from calibtune.estimators.probe import ProbeConfig
from calibtune.estimators.query import DEFAULT_OPTIONS, DEFAULT_QUERY, QueryPrompt

# Methods with an estimator model: one cell per (estimator model E, answering model T).
MATRIX_METHODS = ("probe", "lora", "lora_prompt", "zero_shot")
# Methods read off the answering model itself: one value per answering model.
# likelihood: exp(summed log-probability of the answer); perplexity: exp(mean token
# log-probability) = 1 / perplexity; verbalized: the model's stated probability;
# sampling: the share of sampled answers equivalent to the greedy one (open-ended only).
BASELINE_METHODS = ("option_confidence", "likelihood", "perplexity", "verbalized", "sampling")
MC_ONLY_METHODS = ("option_confidence",)
OPEN_ENDED_ONLY_METHODS = ("sampling",)
GRADER_NAMES = ("exact", "contains", "numeric", "judge")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Selection(_Strict):
    """A slice of one question set: ``questions[start:stop]``, then an optional seeded sample."""

    dataset: str
    split: str | None = None
    subjects: list[str] | None = None
    start: int = Field(0, ge=0)
    stop: int | None = Field(None, ge=0)
    sample: int | None = Field(None, ge=1, description="draw this many at random (seeded) from the slice")


class FeatureSettings(_Strict):
    """Which hidden states the probe reads."""

    layers: Literal["auto"] | list[int] = "auto"  # auto: 1/4, 1/2, 3/4 of the depth and the last layer
    token: Literal["last", "mean"] = "last"


class ProbeSettings(_Strict):
    """The Probe's settings (see ``calibtune.estimators.probe.ProbeConfig``)."""

    layer: Literal["auto", "last"] | int = "auto"
    hidden_size: int = 64
    dropout: float = 0.1
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    max_epochs: int = 200
    patience: int = 20
    val_fraction: float = 0.2

    def to_config(self, seed: int) -> ProbeConfig:
        """The estimator's own config dataclass."""
        return ProbeConfig(seed=seed, **self.model_dump())


class AdapterSettings(_Strict):
    """LoRA adapters and their training, shared by the LoRA and LoRA + Prompt methods."""

    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    layers: Literal["all", "top_half"] = "all"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = Field(8, ge=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    max_train_examples: int | None = Field(800, ge=2, description="a seeded sample of the training answers")
    warmup_fraction: float = 0.05
    eval_every: int = Field(20, ge=1)
    patience: int = Field(4, ge=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)

    def lora(self) -> LoraSettings:
        """peft settings."""
        return LoraSettings(r=self.r, alpha=self.alpha, dropout=self.dropout, target_modules=tuple(self.target_modules),
                            layers=self.layers)

    def training(self, seed: int) -> TrainSettings:
        """Loop settings."""
        return TrainSettings(learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                             batch_size=self.batch_size, epochs=self.epochs, max_steps=self.max_steps,
                             warmup_fraction=self.warmup_fraction, eval_every=self.eval_every,
                             patience=self.patience, seed=seed)


class LoraPromptSettings(AdapterSettings):
    """LoRA + Prompt (calibration tuning): the query, and the divergence that regularises it."""

    query: str = DEFAULT_QUERY
    options: tuple[str, str] = DEFAULT_OPTIONS
    kl_weight: float = Field(1.0, ge=0)
    divergence: Literal["js", "forward_kl", "reverse_kl"] = "js"

    def to_config(self, seed: int) -> LoraPromptConfig:
        """The estimator's own config dataclass."""
        return LoraPromptConfig(lora=self.lora(), train=self.training(seed),
                                query=QueryPrompt(self.query, self.options),
                                kl_weight=self.kl_weight, divergence=self.divergence,
                                val_fraction=self.val_fraction, seed=seed)


class LoraHeadSettings(AdapterSettings):
    """LoRA: the Probe's head on a hidden state with adapters trained jointly."""

    layer: int = Field(-1, description="hidden-state layer; -1 means the middle layer")
    hidden_size: int = 64
    head_dropout: float = 0.1

    def to_config(self, seed: int) -> LoraHeadConfig:
        """The estimator's own config dataclass."""
        return LoraHeadConfig(layer=self.layer, hidden_size=self.hidden_size, dropout=self.head_dropout,
                              lora=self.lora(), train=self.training(seed), val_fraction=self.val_fraction, seed=seed)


class JudgeSettings(_Strict):
    """The language-model judge: a local model, or an OpenAI-compatible chat endpoint."""

    model: str | None = Field(None, description="a model calibtune can load (local judge)")
    base_url: str | None = Field(None, description="an OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    api_model: str | None = Field(None, description="the endpoint's model name")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key (never saved)")
    timeout: float = Field(30.0, gt=0)
    max_retries: int = Field(5, ge=0)


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


class SamplingSettings(_Strict):
    """The sampling-consistency baseline."""

    k: int = Field(5, ge=1)
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(24, ge=1)


class VerbalizedSettings(_Strict):
    """The verbalized-confidence baseline."""

    max_new_tokens: int = Field(8, ge=1)


class ReportSettings(_Strict):
    """How metrics are summarised: bootstrap resamples, interval level, calibration bins."""

    bootstrap_resamples: int = Field(1000, ge=10)
    level: float = Field(0.95, gt=0, lt=1)
    bins: int = Field(10, ge=1, description="bins of ECE (equal-width and equal-mass), MCE and reliability diagrams")


class QuickSettings(_Strict):
    """How ``--quick`` shrinks the study: at most this many questions per selection."""

    train_per_set: int = 40
    eval_per_set: int = 40
    adapter_steps: int = 8


class StudyConfig(_Strict):
    """A whole cross-model study."""

    name: str = "study"
    seed: int = 0
    task: Literal["multiple_choice", "open_ended"] = "multiple_choice"
    models: list[str] = Field(min_length=1)
    dtype: str = "auto"
    device: str = "auto"
    batch_size: int = Field(16, ge=1)
    prompt: str = DEFAULT_PROMPT
    option_prefix: str = " "
    select: Literal["mean", "sum"] = "mean"
    train: list[Selection] = Field(min_length=1)
    eval: list[Selection] = Field(min_length=1)
    methods: list[str] = Field(default_factory=lambda: ["probe", "option_confidence"])
    heatmap: list[str] = Field(default_factory=lambda: ["probe", "lora_prompt"],
                               description="matrix methods drawn as heatmap panels (those that ran)")
    features: FeatureSettings = FeatureSettings()
    probe: ProbeSettings = ProbeSettings()
    lora_prompt: LoraPromptSettings = LoraPromptSettings()
    lora: LoraHeadSettings = LoraHeadSettings()
    zero_shot_calibration: int = Field(200, ge=0, description="training answers used to fit the zero-shot "
                                       "query's temperature (a seeded sample)")
    temperature_scaling: bool = True
    open_ended: OpenEndedSettings = OpenEndedSettings()
    sampling: SamplingSettings = SamplingSettings()
    verbalized: VerbalizedSettings = VerbalizedSettings()
    report: ReportSettings = ReportSettings()
    quick: QuickSettings = QuickSettings()

    @model_validator(mode="after")
    def _methods_fit_the_task(self) -> StudyConfig:
        wrong = MC_ONLY_METHODS if self.task == "open_ended" else OPEN_ENDED_ONLY_METHODS
        for method in self.methods:
            if method in wrong:
                raise ValueError(f"method '{method}' does not apply to task {self.task}")
        judge = self.open_ended.judge
        if self.task == "open_ended" and self.open_ended.grader == "judge":
            if judge is None or not (judge.model or (judge.base_url and judge.api_model)):
                raise ValueError("grader 'judge' needs open_ended.judge.model, or open_ended.judge.base_url "
                                 "and open_ended.judge.api_model")
        if self.open_ended.shots and self.open_ended.exemplars is None:
            raise ValueError("open_ended.shots needs open_ended.exemplars (where the exemplars come from)")
        return self

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        known = MATRIX_METHODS + BASELINE_METHODS
        for method in methods:
            if method not in known:
                raise ValueError(f"unknown method '{method}'{_suggest(method, known)}; known: {', '.join(known)}")
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
        if "{question}" not in prompt:
            raise ValueError("prompt must contain the field {question}")
        return prompt


def _suggest(word: str, options: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


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
