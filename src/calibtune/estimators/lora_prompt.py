"""LoRA + Prompt (calibration tuning) and the zero-shot query.

The estimator model reads "question + proposed answer + query" and P(correct) is its
probability of "yes" (renormalised over no/yes). LoRA + Prompt trains LoRA adapters on
graded answers with cross-entropy, plus ``kl_weight`` times a divergence that keeps the
adapted model's next-token distribution on the answer text close to the base model's (the
base distribution comes from the same model with the adapter disabled). The zero-shot
query is the same prompt with no training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import expit

from calibtune.calibration import PlattScaler
from calibtune.distributed import ONE_PROCESS, DataParallel
from calibtune.errors import CalibtuneError, first_line
from calibtune.estimator_settings import LoraPromptConfig
from calibtune.estimators.adapters import (
    TrainLog,
    attach_lora,
    detach_lora,
    held_out_score,
    kept_held_out,
    load_adapters,
    load_lora_state,
    lora_state,
    save_adapters,
    saved_config,
    target_modules,
    train_loop,
)
from calibtune.estimators.base import check_estimator_model
from calibtune.estimators.divergence import DIVERGENCES, divergence
from calibtune.estimators.query import option_token_ids, two_way_logits, yes_logit
from calibtune.estimators.splits import balanced_weights, validation_split
from calibtune.forward import (
    check_lengths,
    decoder_up_to,
    differentiable_attention,
    finish_logits,
    head_into,
    length_batches,
    lm_head_logits,
    pad_ids,
)
from calibtune.models import LoadedModel
from calibtune.progress import progress_bar
from calibtune.records import Question

# The base model's answer-token logits are computed once before training and kept in memory
# when they fit in this many bytes; otherwise each step recomputes them with the adapter disabled.
BASE_LOGITS_BUDGET = 4 * 2**30
# With adapters on the upper layers only, the states entering the first adapted layer are read once by the base
# pass and kept, up to this many bytes per estimator model (across its cells, until a study lets the model go),
# so training, validation and scoring run only the layers from there on.
LOWER_STATES_BUDGET = 2 * 2**30


@dataclass(frozen=True)
class QueryEncoded:
    """Token ids of prompt + answer + query; ``answer`` is the [start, end) span of the answer tokens."""

    ids: tuple[int, ...]
    answer: tuple[int, int]


def encode_queries(tokenizer, prompts: Sequence[str], answers: Sequence[str], query: str) -> list[QueryEncoded]:
    """Tokenize each (question prompt, proposed answer) with the query appended.

    The three pieces are tokenized apart (special tokens on the prompt only), so the
    answer's token span is exact.
    """
    if not prompts:
        return []
    p_ids = tokenizer(list(prompts))["input_ids"]
    a_ids = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    q_ids = tokenizer(query, add_special_tokens=False)["input_ids"]
    return [QueryEncoded(tuple(p) + tuple(a) + tuple(q_ids), (len(p), len(p) + len(a))) for p, a in zip(p_ids, a_ids)]


def _pad(seqs: Sequence[QueryEncoded], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, mask = pad_ids([s.ids for s in seqs], pad_id, device)
    return ids, mask, mask.sum(dim=1) - 1


def final_hidden(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, readout: int | None,
                 start: int = 0, states: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Hidden states ready for the LM head: after the last layer, or after ``readout`` layers and the final norm
    (the read-out at an intermediate layer; the layers above it are not run). With ``states`` (each sequence's
    states entering layer ``start``, from ``BaseReadings.states``), the layers below ``start`` are not run either."""
    with decoder_up_to(lm, readout, final_norm=True, start=start if states is not None else 0) as decoder:
        if states is None:
            return decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        embeds = torch.nn.utils.rnn.pad_sequence(list(states), batch_first=True)
        # no key/value cache: a cache sized for the blocks run would be indexed by each block's own layer number
        return decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state


def query_logits(lm: LoadedModel, seqs: Sequence[QueryEncoded], token_ids: Sequence[int],
                 readout: int | None = None, start: int = 0,
                 states: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """(no, yes) logits at the end of each sequence (gradients flow if enabled); ``start`` and ``states`` as for
    ``final_hidden``."""
    ids, mask, last = _pad(seqs, lm.tokenizer.pad_token_id, lm.device)
    hidden = final_hidden(lm, ids, mask, readout, start, states)
    return two_way_logits(lm.model, hidden[torch.arange(len(seqs)), last], token_ids)


def query_yes_logits(lm: LoadedModel, seqs: Sequence[QueryEncoded], token_ids: Sequence[int],
                     batch_size: int = 16, description: str | None = None, readout: int | None = None,
                     start: int = 0, states: Sequence[torch.Tensor] | None = None) -> np.ndarray:
    """The logit of P(yes) (``yes_logit``) for each sequence, batched, without gradients; ``start`` and
    ``states`` as for ``final_hidden``."""
    check_lengths(lm, [len(s.ids) for s in seqs])
    out = np.zeros(len(seqs))
    with torch.inference_mode(), progress_bar(description or f"query {lm.name}", len(seqs)) as advance:
        for batch in length_batches([len(s.ids) for s in seqs], batch_size, None):
            entering = None if states is None else [states[i] for i in batch]
            out[batch] = yes_logit(query_logits(lm, [seqs[i] for i in batch], token_ids, readout, start, entering))
            advance(len(batch))
    return out


def query_p_correct(lm: LoadedModel, seqs: Sequence[QueryEncoded], token_ids: Sequence[int],
                    batch_size: int = 16, description: str | None = None, readout: int | None = None,
                    start: int = 0, states: Sequence[torch.Tensor] | None = None) -> np.ndarray:
    """P(yes) for each sequence (renormalised over no/yes), as ``query_yes_logits``."""
    return expit(query_yes_logits(lm, seqs, token_ids, batch_size, description, readout, start, states))


@dataclass
class LoraPromptEstimator:
    """Calibration tuning on an estimator model: ``fit`` / ``predict_proba`` / ``save`` / ``load``.

    Inputs are ``QueryEncoded`` sequences from ``encode_queries`` (built with this
    config's query). The model is wrapped with adapters by ``fit`` and unwrapped by
    ``release``; call ``release`` before training another estimator on the same model.
    ``estimate(questions, answers)`` scores plain texts, asked with the recorded prompt.
    """

    lm: LoadedModel
    config: LoraPromptConfig = field(default_factory=LoraPromptConfig)
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    readout: int | None = None  # read the query's answer after this many layers (None: after the last)
    log: TrainLog | None = None
    _peft: Any = field(default=None, repr=False)
    val_indices: np.ndarray | None = None
    val_weights: np.ndarray | None = None  # the held-out answers' weights in the validation figure
    val_logits: np.ndarray | None = None  # the kept adapters' logits of P(correct) on the held-out answers
    # with ``recalibrate: platt``, the map from the query's logit to P(correct)'s (fitted on the held-out answers)
    recalibration: PlattScaler | None = None
    _base: BaseReadings | None = field(default=None, repr=False)  # the base pass ``fit`` read, with its kept states
    _start: int = 0  # the layer whose entering states ``_base`` keeps (0: none kept)

    @property
    def token_ids(self) -> tuple[int, ...]:
        """The (no, yes) option tokens in this model's vocabulary."""
        return option_token_ids(self.lm.tokenizer, self.config.query, self.config.options)

    def fit(self, seqs: Sequence[QueryEncoded], labels: np.ndarray, checkpoint: Path | None = None,
            base: BaseReadings | None = None, groups: Sequence[str] | None = None,
            parallel: DataParallel = ONE_PROCESS) -> LoraPromptEstimator:
        """Train adapters on graded answers; a stratified ``val_fraction`` is held out for early stopping.

        One pass of the base model over the training and held-out sequences gives the divergence's
        target and the untrained model's validation loss (step 0); ``base`` keeps those readings for
        other users of the same base model (the zero-shot query). ``groups`` (each answer's dataset)
        weight the loss when the config balances by dataset. With ``checkpoint`` (a folder), training
        saves its state there and resumes from it after a crash. With ``parallel``, the processes of a
        group train these adapters together, each on its share of every batch and of the held-out answers.
        """
        cfg = self.config
        if cfg.divergence not in DIVERGENCES:
            raise CalibtuneError(f"unknown divergence '{cfg.divergence}': use one of {', '.join(DIVERGENCES)}")
        y = np.asarray(labels).astype(np.int64)
        if len(np.unique(y)) < 2:
            raise CalibtuneError(f"cannot train LoRA + Prompt: all {len(y)} training labels are one class")
        check_lengths(self.lm, [len(s.ids) for s in seqs])
        idx_train, idx_val, idx_cal = held_out_parts(y, cfg, self.seed)
        self.val_indices = idx_cal if len(idx_cal) else idx_val
        tokens = self.token_ids
        train_seqs = [seqs[i] for i in idx_train]
        val_seqs, y_val = [seqs[i] for i in idx_val], y[idx_val]
        cal_seqs = [seqs[i] for i in idx_cal]
        base = base if base is not None else BaseReadings()
        want_answers = cfg.kl_weight > 0 and base.fits(self.lm, train_seqs)
        # the frozen layers below the first adapter: read once by the base pass, not by every step and validation
        start = self.kept_states_start(base, seqs, parallel)
        self._base, self._start = base, start
        val_two_way, _ = base.read(self.lm, val_seqs, tokens, answers=False, batch_size=cfg.batch_size * 2,
                                   readout=self.readout, start=start)
        _, base_cache = base.read(self.lm, train_seqs, tokens, answers=want_answers, batch_size=cfg.batch_size * 2,
                                  readout=self.readout, start=start)
        if cal_seqs and start:  # their lower layers' states, for the pass after training
            base.read(self.lm, cal_seqs, tokens, answers=False, batch_size=cfg.batch_size * 2, readout=self.readout,
                      start=start)
        train_states = base.states(train_seqs, start) if start else None
        val_states = base.states(val_seqs, start) if start else None
        weights = torch.ones(len(y), dtype=torch.float32)
        if cfg.balance == "dataset":
            if groups is None:
                raise CalibtuneError("balance: dataset needs each training answer's dataset")
            weights = torch.from_numpy(balanced_weights(y, groups)).float()
        w_train, w_val, w_cal = weights[idx_train], weights[idx_val].numpy(), weights[idx_cal].numpy()
        self.val_weights = w_val

        def weighted_ce(logits: torch.Tensor, target: torch.Tensor, w: torch.Tensor,
                        total: torch.Tensor | None = None) -> torch.Tensor:
            """Weighted cross-entropy, divided by ``total`` weight (default: these answers' own)."""
            losses = torch.nn.functional.cross_entropy(logits, target, reduction="none")
            return (losses * w.to(losses.device)).sum() / (w.sum() if total is None else total)

        score0 = held_out_score(cfg.keep, yes_logit(val_two_way), y_val, w_val)
        self._peft = attach_lora(self.lm, cfg, self.seed, layers=self.adapted_layers(), parallel=parallel)
        self.lm.model.train()
        params = [p for p in self._peft.parameters() if p.requires_grad]
        y_train = torch.from_numpy(y[idx_train])

        def step_loss(whole: np.ndarray) -> torch.Tensor:
            # this process's share of the batch, each term normalised as over the whole batch
            batch = parallel.shard(whole)
            if len(batch) == 0:
                return torch.zeros(())
            items = [train_seqs[i] for i in batch]
            ids, mask, last = _pad(items, self.lm.tokenizer.pad_token_id, self.lm.device)
            states = None if train_states is None else [train_states[i] for i in batch]
            with differentiable_attention(self.lm):
                hidden = final_hidden(self.lm, ids, mask, self.readout, start, states)
            logits = two_way_logits(self.lm.model, hidden[torch.arange(len(items)), last], tokens)
            loss = weighted_ce(logits, y_train[batch].to(logits.device), w_train[batch], total=w_train[whole].sum())
            if cfg.kl_weight > 0:
                rows, cols = _answer_positions(items)
                adapted = lm_head_logits(self.lm.model, hidden[rows, cols])
                if base_cache is not None:
                    target = finish_logits(self.lm.model, torch.cat([base_cache[i] for i in batch]))
                else:  # too large to keep: the base model again, with the adapters off
                    with torch.no_grad(), self._peft.disable_adapter():
                        base_hidden = final_hidden(self.lm, ids, mask, self.readout, start, states)
                        target = lm_head_logits(self.lm.model, base_hidden[rows, cols])
                rows_share = len(rows) / len(_answer_positions([train_seqs[i] for i in whole])[0])
                loss = loss + cfg.kl_weight * divergence(adapted, target, cfg.divergence) * rows_share
            return loss

        validated: list[np.ndarray] = []

        def held_out_logits(scored: Sequence[QueryEncoded] = val_seqs,
                            scored_states: list[torch.Tensor] | None = val_states) -> np.ndarray:
            self.lm.model.eval()
            mine = parallel.share(np.arange(len(scored)))
            z = np.zeros(len(mine))
            with torch.no_grad():
                for batch in length_batches([len(scored[i].ids) for i in mine], cfg.batch_size * 2, None):
                    states = None if scored_states is None else [scored_states[i] for i in mine[batch]]
                    logits = query_logits(self.lm, [scored[i] for i in mine[batch]], tokens, self.readout, start,
                                          states)
                    z[batch] = yes_logit(logits)
            self.lm.model.train()
            return parallel.gather(mine, z, len(scored))

        def val_score() -> float:
            validated.append(held_out_logits())
            return held_out_score(cfg.keep, validated[-1], y_val, w_val)

        self.log = train_loop(params, len(train_seqs), step_loss, val_score, lambda: lora_state(self._peft),
                              lambda s: load_lora_state(self._peft, s), cfg, self.seed,
                              f"train LoRA + Prompt {self.meta.get('estimator_model', self.lm.name)} on "
                              f"{self.meta.get('trained_on', '?')}", checkpoint, initial_val_loss=score0,
                              lengths=[len(s.ids) for s in train_seqs], parallel=parallel)
        if cal_seqs:  # the answers kept apart from the step's choice calibrate it
            self.val_logits = held_out_logits(cal_seqs, base.states(cal_seqs, start) if start else None)
            y_cal = y[idx_cal]
        else:
            self.val_logits = kept_held_out(self.log, validated, initial=yes_logit(val_two_way))
            y_cal, w_cal = y_val, w_val
        if cfg.recalibrate == "platt":
            if self.val_logits is None:  # kept before a resume: its validation is not in memory
                self.val_logits = held_out_logits()
            self.recalibration = fit_recalibration(self.val_logits, y_cal, w_cal)
            self.val_logits = self.recalibration.transform_logit(self.val_logits)
        base.drop_answers()  # the divergence's target is needed while training only
        self.lm.model.eval()
        return self

    def kept_states_start(self, base: BaseReadings, seqs: Sequence[QueryEncoded],
                          parallel: DataParallel = ONE_PROCESS) -> int:
        """The first adapted layer when the base pass keeps the states entering it for ``seqs``, so that training,
        validation and scoring start there (adapters on the upper layers only, unsharded, the states within
        ``LOWER_STATES_BUDGET``); 0 when whole passes run. A caller reading sequences to be scored after training
        through ``base`` before ``fit`` (the zero-shot query's) reads them with this start, to keep their states."""
        adapted = self.adapted_layers()
        return adapted[0] if adapted and not parallel.sharded and base.make_room(self.lm, seqs, adapted[0]) else 0

    def adapted_layers(self) -> list[int] | None:
        """The layers that carry adapters (None: every layer): those below the read-out layer when there is one,
        and of those (or of all) the upper half with ``layers: top_half``."""
        if self.readout is None and self.config.layers == "all":
            return None
        below = list(range(self.lm.num_layers if self.readout is None else self.readout))
        return below[len(below) // 2:] if self.config.layers == "top_half" else below

    def predict_proba(self, seqs: Sequence[QueryEncoded]) -> np.ndarray:
        """P(correct) for each sequence."""
        if self._peft is None:
            raise CalibtuneError("LoRA + Prompt is not fitted: call fit() or load() first")
        self.lm.model.eval()
        # the frozen layers below the adapters are not run again for sequences whose states the base pass kept
        states = self._base.kept_states(seqs, self._start) if self._base is not None and self._start else None
        z = query_yes_logits(self.lm, seqs, self.token_ids, self.config.batch_size * 2,
                             f"predict LoRA + Prompt {self.lm.name}", self.readout,
                             self._start if states is not None else 0, states)
        return expit(z if self.recalibration is None else self.recalibration.transform_logit(z))

    def estimate(self, questions: Sequence[Question | str], answers: Sequence[str]) -> np.ndarray:
        """P(correct) of each proposed answer, asked with the prompt and separator the estimator recorded."""
        from calibtune.prompts import DEFAULT_PROMPT, format_prompts

        template, prefix = self.meta.get("prompt", DEFAULT_PROMPT), self.meta.get("option_prefix", " ")
        prompts = format_prompts(questions, template)
        return self.predict_proba(encode_queries(self.lm.tokenizer, prompts, [prefix + a for a in answers],
                                                 self.config.query))

    def describe(self) -> dict[str, Any]:
        """Every setting and outcome, for the saved JSON."""
        return {"method": "lora_prompt", "config": self.config.model_dump(mode="json"), "seed": self.seed,
                "readout_layer": self.readout,
                "recalibration": None if self.recalibration is None else asdict(self.recalibration),
                "target_modules": target_modules(self.lm, self.config), "token_ids": list(self.token_ids),
                "train_log": asdict(self.log) if self.log else None, **self.meta}

    def save(self, folder: Path) -> Path:
        """Adapters in peft's safetensors format beside ``lora_prompt.json``."""
        if self._peft is None:
            raise CalibtuneError("LoRA + Prompt is not fitted: nothing to save")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_adapters(self._peft, folder / "adapter")
        (folder / "lora_prompt.json").write_text(json.dumps(self.describe(), indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path, lm: LoadedModel) -> LoraPromptEstimator:
        """Read an estimator written by ``save`` onto the same estimator model ``lm``."""
        folder = Path(folder)
        try:
            info = json.loads((folder / "lora_prompt.json").read_text())
            config, seed = saved_config(LoraPromptConfig, info)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CalibtuneError(f"cannot load LoRA + Prompt from {folder}: {first_line(exc)}") from exc
        check_estimator_model(info, lm, folder)
        meta = {k: v for k, v in info.items()
                if k not in ("method", "config", "seed", "target_modules", "token_ids", "train_log", "readout_layer",
                             "recalibration")}
        est = cls(lm=lm, config=config, seed=seed, meta=meta, readout=info.get("readout_layer"))
        if config.recalibrate != "none":
            try:
                est.recalibration = PlattScaler(**info["recalibration"])
            except (KeyError, TypeError) as exc:
                raise CalibtuneError(f"cannot load LoRA + Prompt from {folder}: recalibrate is "
                                     f"{config.recalibrate} but its fitted slope and bias are missing") from exc
        if list(est.token_ids) != info["token_ids"]:
            raise CalibtuneError(f"{folder}: the query's option tokens differ for model '{lm.name}'")
        try:
            est._peft = load_adapters(lm, folder / "adapter")
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise CalibtuneError(f"cannot load adapters from {folder / 'adapter'}: {first_line(exc)}") from exc
        lm.model.eval()
        return est

    def release(self) -> None:
        """Take the adapters off the estimator model."""
        if self._peft is not None:
            detach_lora(self._peft)
            self._peft = None
        self._base, self._start = None, 0  # kept states stay with the readings, for the next cell on this model


def held_out_parts(labels: np.ndarray, config: LoraPromptConfig, seed: int) -> tuple[np.ndarray, np.ndarray,
                                                                                      np.ndarray]:
    """The training answers' indices ``(trained on, choosing the step, calibrating it)``: ``val_fraction`` held
    out (``validation_split``), and of those ``calibration_fraction`` kept apart to calibrate (stratified, seeded;
    empty when 0)."""
    idx_train, idx_val = validation_split(labels, config.val_fraction, seed)
    if config.calibration_fraction == 0:
        return idx_train, idx_val, idx_val[:0]
    try:
        choose, calibrate = validation_split(np.asarray(labels)[idx_val], config.calibration_fraction, seed)
    except CalibtuneError as exc:
        raise CalibtuneError(f"calibration_fraction {config.calibration_fraction:g} of the {len(idx_val)} held-out "
                             "answers leaves a part without a right and a wrong answer; hold out more "
                             "(val_fraction) or set calibration_fraction: 0") from exc
    return idx_train, idx_val[choose], idx_val[calibrate]


def fit_recalibration(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> PlattScaler:
    """The Platt scaling of the query's logit on the held-out answers (weighted as in training); the identity when
    its slope is not positive, so that the map never reverses the ranking."""
    fitted = PlattScaler.fit_logits(logits, labels, weights)
    return fitted if fitted.slope > 0 else PlattScaler()


@dataclass
class BaseReadings:
    """What the base estimator model (no adapters) makes of query sequences, each read once and kept:
    the (no, yes) logits at the end (the zero-shot query's P(correct), the untrained model's validation
    loss) and the raw LM-head outputs at the answer tokens (LoRA + Prompt's divergence target); when asked, the
    states entering a layer (what adapters on the layers from there on start from: the frozen layers below
    are then run once per sequence, for training, validation and scoring; the states stay for the next cell on
    the same model, within ``LOWER_STATES_BUDGET``, see ``make_room``).

    All come from one pass over "prompt + answer + query", the answer positions being causal and so
    unaffected by the query after them. Keyed by the sequence and the option tokens (the states by the sequence
    and the layer).
    """

    two_way: dict[tuple, torch.Tensor] = field(default_factory=dict)
    answers: dict[tuple, torch.Tensor] = field(default_factory=dict)
    lower: dict[tuple, torch.Tensor] = field(default_factory=dict)

    def fits(self, lm: LoadedModel, seqs: Sequence[QueryEncoded], budget: int | None = None) -> bool:
        """Whether the answer-token logits of ``seqs`` fit in memory (``BASE_LOGITS_BUDGET`` bytes)."""
        budget = BASE_LOGITS_BUDGET if budget is None else budget
        head = lm.model.get_output_embeddings()
        return _answer_rows(seqs) * head.weight.shape[0] * head.weight.element_size() <= budget

    def make_room(self, lm: LoadedModel, seqs: Sequence[QueryEncoded], start: int, budget: int | None = None) -> bool:
        """Whether the states entering layer ``start`` of ``seqs`` can be kept beside those kept already, within
        ``LOWER_STATES_BUDGET`` bytes; when they cannot, every kept state is forgotten first (another cell's: the
        blocks they are views of are freed whole) and the answer is whether ``seqs``' own fit."""
        budget = LOWER_STATES_BUDGET if budget is None else budget
        embeddings = lm.model.get_input_embeddings().weight
        per_token = embeddings.shape[1] * embeddings.element_size()
        wanted = {(start, s.ids) for s in seqs}
        new = sum(len(ids) for _, ids in wanted - self.lower.keys()) * per_token
        held = sum(len(ids) for _, ids in self.lower) * per_token
        if new + held <= budget:
            return True
        self.lower.clear()
        return sum(len(ids) for _, ids in wanted) * per_token <= budget

    def read(self, lm: LoadedModel, seqs: Sequence[QueryEncoded], token_ids: Sequence[int], answers: bool,
             batch_size: int = 16, readout: int | None = None,
             start: int = 0) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """(no, yes) logits ``[n, 2]`` (fp32) and, with ``answers``, each sequence's answer-token LM-head outputs,
        read after the last layer or after ``readout`` layers; with ``start`` > 0 the states entering layer
        ``start`` are kept too (``states``). Only sequences not read before (or read without what is wanted now)
        are run, and those that lack only their states run only the layers below ``start``."""
        tokens = tuple(token_ids)
        keys = [(tokens, readout, s.ids) for s in seqs]
        whole = [i for i, k in enumerate(keys) if k not in self.two_way or (answers and k not in self.answers)]
        lower_only = sorted(set(i for i, s in enumerate(seqs) if start and (start, s.ids) not in self.lower)
                            - set(whole))
        for todo, upper in ((whole, True), (lower_only, False)):
            if todo:
                self._run(lm, [seqs[i] for i in todo], [keys[i] for i in todo], tokens, answers, batch_size, readout,
                          start, upper)
        two_way = torch.stack([self.two_way[k] for k in keys]) if keys else torch.zeros(0, 2)
        return two_way, [self.answers[k] for k in keys] if answers else None

    def states(self, seqs: Sequence[QueryEncoded], start: int) -> list[torch.Tensor]:
        """Each sequence's states entering layer ``start`` (``[tokens, hidden]``), kept by a ``read`` with it."""
        return [self.lower[(start, s.ids)] for s in seqs]

    def kept_states(self, seqs: Sequence[QueryEncoded], start: int) -> list[torch.Tensor] | None:
        """``states`` when every sequence's are kept, else None."""
        return self.states(seqs, start) if all((start, s.ids) in self.lower for s in seqs) else None

    def _run(self, lm, seqs, keys, tokens, answers: bool, batch_size: int, readout: int | None, start: int,
             upper: bool = True) -> None:
        """Read ``seqs``: the states entering layer ``start`` (when above 0) and, when ``upper``, the layers from
        there on (the (no, yes) logits, and with ``answers`` the answer-token outputs)."""
        head = lm.model.get_output_embeddings()
        lm.model.eval()
        width = lm.model.get_input_embeddings().weight.shape[1]
        lower = (torch.empty(sum(len(s.ids) for s in seqs), width, dtype=head.weight.dtype, device=lm.device)
                 if start else None)  # one block, as for the answer outputs below
        stored = 0
        # The answer outputs of this read go into one block, each sequence's a view of it: the allocator kept
        # thousands of separate 0.2-4 MB copies after they were dropped, while one block is returned whole
        # (resident memory falls by its size at the end of a fit; the study's peak did not change: README).
        block = (torch.empty(_answer_rows(seqs), head.weight.shape[0], dtype=head.weight.dtype, device=lm.device)
                 if answers and upper else None)
        filled = 0
        with torch.no_grad(), progress_bar(f"base model {lm.name}", len(seqs)) as advance:
            for batch in length_batches([len(s.ids) for s in seqs], batch_size, None):
                items = [seqs[i] for i in batch]
                ids, mask, last = _pad(items, lm.tokenizer.pad_token_id, lm.device)
                states = None
                if lower is not None:
                    with decoder_up_to(lm, start) as below:
                        entering = below(input_ids=ids, attention_mask=mask).last_hidden_state
                    states = []
                    for row, item in enumerate(items):
                        into = lower[stored:stored + len(item.ids)]
                        into.copy_(entering[row, :len(item.ids)])
                        stored += len(item.ids)
                        states.append(into)
                        self.lower[(start, item.ids)] = into
                if not upper:
                    advance(len(batch))
                    continue
                hidden = final_hidden(lm, ids, mask, readout, start, states)
                logits = two_way_logits(lm.model, hidden[torch.arange(len(items)), last], tokens)
                outputs = None
                if block is not None:  # one head pass for the whole batch: with a few rows per sequence, reading
                    # the head's weights once per sequence made this pass 6x slower for Gemma (262k words)
                    rows, cols = _answer_positions(items)
                    into = block[filled:filled + len(rows)]
                    head_into(head, hidden[rows, cols], into)
                    filled += len(rows)
                    outputs = into.split(np.bincount(rows, minlength=len(items)).tolist())
                for row, i in enumerate(batch):
                    self.two_way[keys[i]] = logits[row].clone()
                    if outputs is not None:
                        self.answers[keys[i]] = outputs[row]
                advance(len(batch))

    def drop_answers(self) -> None:
        """Forget the answer-token outputs (large: a vocabulary per answer token); keep the (no, yes) logits."""
        self.answers.clear()


def _answer_rows(seqs: Sequence[QueryEncoded]) -> int:
    """How many positions of ``seqs`` predict an answer token (``_answer_positions``' length)."""
    return sum(max(0, s.answer[1] - max(s.answer[0], 1)) for s in seqs)


def _answer_positions(items: Sequence[QueryEncoded]) -> tuple[list[int], list[int]]:
    """(row, position) pairs whose next-token distribution predicts an answer token."""
    rows, cols = [], []
    for row, item in enumerate(items):
        start, end = item.answer
        for pos in range(max(start, 1), end):
            rows.append(row)
            cols.append(pos - 1)
    return rows, cols
