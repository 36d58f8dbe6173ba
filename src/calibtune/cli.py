"""The ``calibtune`` command line: a thin Typer layer over the Python API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from calibtune.errors import CalibtuneError
from calibtune.errors import friendly as _friendly

app = typer.Typer(
    help="Teach language models to know what they don't know: train and evaluate uncertainty estimators.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


@app.command()
@_friendly
def run(
    config: Annotated[Optional[Path], typer.Argument(help="Study config (YAML). Omit for the bundled default study.")] = None,
    output_path: Annotated[Optional[Path], typer.Option("--output-path", "-o", help="Run folder (default: runs/<name>, or runs/<name>-quick).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A small sample of the same study, for a first look (minutes).")] = False,
    model: Annotated[Optional[list[str]], typer.Option("--model", help="Replace the config's models (repeat for several).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Sequences per forward pass.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Replace the config's seed.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="auto (bf16 where fast, else fp32), bfloat16, float32, float16.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (stages, FLOPs, memory, time estimates) without loading any model.")] = False,
    num_processes: Annotated[int, typer.Option("--num-processes", min=1, help="Run the study in N processes on this machine (torchrun): shards and cells are dealt out; the same scores as one process.")] = 1,
) -> None:
    """Run a whole cross-model study and write its run folder (scores, metrics, heatmap, report)."""
    from calibtune.config import load_config
    from calibtune.distributed import launched, relaunch

    if num_processes > 1 and not launched() and not dry_run:
        argv = [a for a in sys.argv[1:] if not a.startswith("--num-processes")]
        if "--num-processes" in sys.argv:  # "--num-processes N": drop its value too
            value = sys.argv.index("--num-processes") + 1
            argv = [a for i, a in enumerate(sys.argv[1:], start=1) if i not in (value - 1, value)]
        raise typer.Exit(relaunch(num_processes, argv))
    cfg = load_config(config)
    overrides = {k: v for k, v in {"models": model, "batch_size": batch_size, "seed": seed,
                                   "device": device, "dtype": dtype}.items() if v is not None}
    if overrides:
        cfg = cfg.model_validate({**cfg.model_dump(), **overrides})
    if dry_run:
        from calibtune.plan import dry_run as plan

        typer.echo(plan(cfg, quick, processes=num_processes))
        return
    from calibtune.progress import console
    from calibtune.study import Study

    out = output_path or Path("runs") / (cfg.name + ("-quick" if quick else ""))
    study = Study(cfg, out, quick=quick, log=lambda msg: console.print(msg, highlight=False))
    metrics = study.run()
    if metrics is None:  # a process of several: the main one reports
        return
    _print_metrics(metrics)
    console.print(f"run folder: {out}  (open {out / 'report.html'})  in {study.timings['total']:.0f} s")


def _print_metrics(metrics) -> None:
    from rich.table import Table

    from calibtune.progress import console
    from calibtune.report.labels import method_label

    table = Table(title="metrics per cell (held-out questions)")
    has_ts = "ece_ts" in metrics
    columns = ["method", "model", "trained on", "n", "AUROC", "ECE", "Brier", "accuracy"]
    for col in columns + (["ECE after TS"] if has_ts else []) + ["ECE after Platt (cross-fitted)"]:
        table.add_column(col)
    for row in metrics.itertuples():
        cells = [method_label(row.method), row.model, row.trained_on, str(row.n), f"{row.auroc:.3f}",
                 f"{row.ece:.3f}", f"{row.brier:.3f}", f"{row.accuracy:.3f}"]
        table.add_row(*cells, *([f"{row.ece_ts:.3f}"] if has_ts else []), f"{row.ece_xfit:.3f}")
    console.print(table)


def _value_with_interval(row: dict, m: str, sign: str = "") -> str:
    """``0.712 [0.676, 0.748]`` from ``row``'s ``m``, ``m_low`` and ``m_high``; the value alone without an
    interval; n/a without a value (NaN or None, as a JSON record has it)."""
    value, low, high = (row.get(k) for k in (m, f"{m}_low", f"{m}_high"))
    if value is None or value != value:
        return "n/a"
    if low is None or high is None or low != low or high != high:
        return f"{value:{sign}.3f}"
    return f"{value:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"


def _markdown_metrics(metrics, paired: list[dict]) -> str:
    """The metrics table (with intervals) and the paired differences, as Markdown."""
    from calibtune.compare import render_table
    from calibtune.report.labels import method_label

    rows = [[method_label(r["method"]), r["model"], r["trained_on"], str(r["n"])]
            + [_value_with_interval(r, m) for m in ("auroc", "ece", "ece_ts", "ece_xfit", "brier", "aurc")]
            + [f"{r['accuracy']:.3f}"] for r in metrics.to_dict("records")]
    text = render_table(["method", "model", "trained on", "n", "AUROC", "ECE", "ECE after TS",
                         "ECE after Platt (cross-fitted)", "Brier", "AURC", "accuracy"], rows, True)
    if paired:
        diff_rows = [[f"{method_label(d['a'])} - {method_label(d['b'])}", d["model"], d["trained_on"],
                      f"{d['auroc_diff']:+.3f} [{d['auroc_diff_low']:+.3f}, {d['auroc_diff_high']:+.3f}]",
                      f"{d['ece_diff']:+.3f} [{d['ece_diff_low']:+.3f}, {d['ece_diff_high']:+.3f}]"] for d in paired]
        text += "\n\n" + render_table(["pair", "model", "trained on", "AUROC difference", "ECE difference"],
                                      diff_rows, True)
    return text


def _markdown_datasets(info: dict) -> str:
    """Each cell on each evaluation dataset (accuracy, mean P(correct) and ECE after TS, AUROC), as Markdown
    ('' when the evaluation set has one dataset)."""
    from calibtune.compare import render_table
    from calibtune.report.labels import method_label

    rows = [[method_label(r["method"]), r["model"], r["trained_on"], r["dataset"], str(r["n"])]
            + [_value_with_interval(r, m) for m in ("accuracy", "mean_p_ts", "ece_ts", "auroc")]
            for r in info.get("datasets", [])]
    if not rows:
        return ""
    return "\n\n" + render_table(["method", "model", "trained on", "dataset", "n", "accuracy",
                                   "mean P after TS", "ECE after TS", "AUROC"], rows, True)


def _markdown_data_scale(info: dict) -> str:
    """A data-scale run's AUROC and ECE at each size and its trend per doubling, as Markdown ('' otherwise)."""
    from calibtune.compare import render_table
    from calibtune.report.labels import method_label

    if not info.get("data_scale"):
        return ""
    ordered = sorted(info["data_scale"], key=lambda r: (r["method"], r["model"], r["trained_on"], r["train_size"]))
    rows = [[method_label(r["method"]), r["model"], r["trained_on"], str(r["train_size"])]
            + [_value_with_interval(r, m) for m in ("auroc", "ece", "ece_ts")] for r in ordered]
    text = "\n\n" + render_table(["method", "model", "trained on", "training answers", "AUROC", "ECE",
                                  "ECE after TS"], rows, True)
    trend = [[method_label(r["method"]), r["model"], r["trained_on"]]
             + [_value_with_interval(r, m, "+") for m in ("slope", "gap_first", "gap_last", "gap_slope")]
             for r in info.get("data_scale_trend", [])]
    if trend:
        text += "\n\n" + render_table(["method", "model", "trained on", "AUROC per doubling",
                                       "gap to the Probe, fewest", "gap to the Probe, most", "gap per doubling"],
                                      trend, True)
    return text


@app.command()
@_friendly
def models(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List the bundled models (installed? converted?) and other models in the cache."""
    from calibtune.bundled import cache_dir, list_models

    rows = list_models()
    if as_json:
        typer.echo(json.dumps([r.__dict__ for r in rows], indent=2))
        return
    typer.echo(f"cache: {cache_dir()}")
    for r in rows:
        state = ("converted" if r.converted else "installed, not yet converted") if r.installed else "not installed"
        typer.echo(f"{r.name:16} {r.kind:8} {state:30} {r.description}")
        if not r.installed:
            typer.echo(f"{'':16} install: {r.location}")


@app.command()
@_friendly
def datasets(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List every bundled question set with its splits and sizes."""
    from calibtune.data import list_datasets

    infos = list_datasets()
    if as_json:
        typer.echo(json.dumps([{**i.__dict__} for i in infos], indent=2))
        return
    for info in infos:
        splits = ", ".join(f"{s} {n:,}" + (" (default)" if s == info.default_split else "") for s, n in info.splits.items())
        typer.echo(f"{info.name:15} {splits:50} {info.description}")


@app.command()
@_friendly
def answer(
    dataset: Annotated[str, typer.Argument(help="A bundled set name or a .jsonl/.csv file.")],
    model: Annotated[str, typer.Option("--model", help="Bundled name, local folder or hub id.")],
    split: Annotated[Optional[str], typer.Option("--split", help="Split (default: the set's default).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N questions.")] = None,
    open_ended: Annotated[bool, typer.Option("--open-ended", help="Generate answers (automatic for open-ended sets).")] = False,
    grader: Annotated[str, typer.Option("--grader", help="Open-ended grader: exact, contains or numeric.")] = "contains",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Open-ended answers: token limit.")] = 24,
    chat_template: Annotated[bool, typer.Option("--chat-template", help="Open-ended answers: ask in the model's chat template (instruct models).")] = False,
    shots: Annotated[int, typer.Option("--shots", min=0, help="Open-ended answers: the set's first N questions, with their first reference answer, as exemplars; the questions answered are the ones after them.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    output_path: Annotated[Path, typer.Option("--output-path", "-o", help="Where to write the graded answers (.parquet).")] = Path("answers.parquet"),
    dtype: Annotated[str, typer.Option("--dtype")] = "auto",
    device: Annotated[str, typer.Option("--device")] = "auto",
) -> None:
    """Answer a question set (cloze scoring, or generation for open-ended questions), grade it, write the answers."""
    from calibtune.answer import ClozeSettings, answer_multiple_choice
    from calibtune.data import load_questions
    from calibtune.generate import GenerationSettings
    from calibtune.graders import get_grader, grade_answers
    from calibtune.models import load_model
    from calibtune.open_ended import OpenEndedPrompt, answer_open_ended
    from calibtune.records import answers_to_table

    every = load_questions(dataset, split=split)
    exemplars, questions = every[:shots], every[shots:][:limit]
    if not questions:
        raise CalibtuneError(f"{dataset} has {len(every)} questions: none is left to answer after {shots} exemplars")
    open_ended = open_ended or not questions[0].is_multiple_choice
    if (shots or chat_template) and not open_ended:
        raise CalibtuneError("--shots and --chat-template are for open-ended answers (add --open-ended)")
    rule = get_grader(grader)
    lm = load_model(model, dtype=dtype, device=device)
    if open_ended:
        generation = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
        prompt = OpenEndedPrompt(ClozeSettings().prompt, tuple(exemplars), chat_template)
        graded = grade_answers(answer_open_ended(lm, questions, prompt, generation), questions, rule)
    else:
        graded = grade_answers(answer_multiple_choice(lm, questions, ClozeSettings(batch_size=batch_size)), questions)
    answers_to_table(graded).to_parquet(output_path, index=False)
    accuracy = sum(a.label for a in graded) / len(graded)
    typer.echo(f"{len(graded)} answers, accuracy {accuracy:.3f}, written to {output_path}")


@app.command()
@_friendly
def grade(
    answers_path: Annotated[Path, typer.Argument(help="Answers written by `calibtune answer` (.parquet).")],
    dataset: Annotated[list[str], typer.Option("--dataset", help="The question set the answers are to (name or file; repeat for several). Answers to other questions are left out, and counted.")],
    split: Annotated[Optional[str], typer.Option("--split")] = None,
    grader: Annotated[str, typer.Option("--grader", help="exact, contains, numeric, or judge.")] = "contains",
    compare: Annotated[Optional[str], typer.Option("--compare", help="A second grader; report the agreement of the two.")] = None,
    judge_model: Annotated[Optional[str], typer.Option("--judge-model", help="Local judge model (for grader judge).")] = None,
    judge_url: Annotated[Optional[str], typer.Option("--judge-url", help="OpenAI-compatible base URL (for grader judge).")] = None,
    judge_api_model: Annotated[Optional[str], typer.Option("--judge-api-model", help="The endpoint's model name.")] = None,
    api_key_env: Annotated[str, typer.Option("--api-key-env", help="Environment variable holding the endpoint's key.")] = "OPENAI_API_KEY",
    sample: Annotated[Optional[int], typer.Option("--sample", help="Grade a seeded sample of this many answers.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="text or markdown.")] = "text",
    output_path: Annotated[Optional[Path], typer.Option("--output-path", "-o", help="Write the regraded answers here.")] = None,
) -> None:
    """Grade open-ended answers again, with any grader; with --compare, Cohen's kappa and the confusion table of two."""
    import random

    import pandas as pd

    from calibtune.config import JudgeSettings, OpenEndedSettings
    from calibtune.data import load_questions
    from calibtune.graders import (
        JudgementCache,
        build_grader,
        count_undecided,
        format_agreement,
        grade_answers,
        grader_agreement,
    )
    from calibtune.records import answers_from_table, answers_to_table

    if not answers_path.is_file():
        raise CalibtuneError(f"answers file {answers_path} not found")
    try:
        answers = answers_from_table(pd.read_parquet(answers_path))
    except Exception as exc:  # pyarrow and pandas raise many kinds for a file that is not an answers table
        raise CalibtuneError(f"{answers_path} is not an answers table written by `calibtune answer`: {exc}") from exc
    if not answers:
        raise CalibtuneError(f"{answers_path} holds no answers")
    questions = [q for name in dataset for q in load_questions(name, split=split)]
    known = {q.id for q in questions}
    outside = [a for a in answers if a.question_id not in known]
    if len(outside) == len(answers):
        raise CalibtuneError(f"none of the {len(answers)} answers in {answers_path} is to a question of "
                             f"{', '.join(dataset)} (e.g. '{answers[0].question_id}')")
    if outside:
        answers = [a for a in answers if a.question_id in known]
        typer.echo(f"{len(outside)} answers are to questions outside {', '.join(dataset)} and are left out")
    if sample is not None and sample < len(answers):
        answers = random.Random(seed).sample(answers, sample)
    judge = JudgeSettings(model=judge_model, base_url=judge_url, api_model=judge_api_model, api_key_env=api_key_env)

    def make(name: str):
        try:
            return build_grader(OpenEndedSettings(grader=name, judge=judge if name == "judge" else None))
        except ValueError as exc:
            raise CalibtuneError(f"grader {name}: {exc}") from exc

    def graded(name: str):
        chosen = make(name)
        cache = JudgementCache.default() if hasattr(chosen, "grade_batch") else None
        out = grade_answers(answers, questions, chosen, cache=cache)
        undecided = count_undecided(out)
        accuracy = sum(a.label for a in out) / len(out)
        typer.echo(f"{len(out)} answers graded by {out[0].grader}: accuracy {accuracy:.3f}"
                   + (f" ({undecided} undecided, counted as wrong)" if undecided else ""))
        return out

    first = graded(grader)
    if output_path:
        answers_to_table(first).to_parquet(output_path, index=False)
    if compare:
        second = graded(compare)
        agreement = grader_agreement([a.correct for a in first], [a.correct for a in second])
        typer.echo(format_agreement(agreement, first[0].grader, second[0].grader, markdown=fmt == "markdown"))


@app.command()
@_friendly
def ask(
    estimator: Annotated[Path, typer.Argument(help="An estimator folder, e.g. runs/default/estimators/lora_prompt/<E>__on__<T>.")],
    question: Annotated[Optional[str], typer.Argument(help="The question; omit to read questions from stdin, one per line.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="The answering model (default: the model whose answers the estimator was trained on).")] = None,
    choice: Annotated[Optional[list[str]], typer.Option("--choice", help="An option of a multiple-choice question (repeat for each); needed by estimators trained on multiple-choice answers.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", help="Answer token limit (default: the one the estimator's answers were made with).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per question.")] = False,
    no_temperature: Annotated[bool, typer.Option("--no-temperature", help="Print the estimator's own P(correct), without the temperature its study fitted.")] = False,
    dtype: Annotated[str, typer.Option("--dtype")] = "auto",
    device: Annotated[str, typer.Option("--device")] = "auto",
) -> None:
    """Answer a question and print the answer with the estimator's P(correct), scaled by its study's temperature."""
    from calibtune.ask import ask as ask_questions

    if not estimator.is_dir():
        raise CalibtuneError(f"estimator folder {estimator} not found")
    questions = [question] if question is not None else sys.stdin.read().splitlines()
    for item in ask_questions(estimator, questions, model, max_new_tokens, dtype, device, choice or (),
                              temperature=not no_temperature):
        if as_json:
            typer.echo(json.dumps(item.__dict__))
            continue
        scaled = ("" if item.temperature is None else f"; {item.p_correct_raw:.3f} before the study's temperature "
                  f"{item.temperature:.3f}, fitted on its {item.temperature_fitted_on}")
        typer.echo(f"Q: {item.question}\nA: {item.answer}\nP(correct) = {item.p_correct:.3f}  "
                   f"({item.method} on {item.estimator_model}, answered by {item.answering_model}{scaled})")


@app.command()
@_friendly
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `calibtune run`.")],
    fmt: Annotated[str, typer.Option("--format", help="text, or markdown to print the tables for pasting.")] = "text",
) -> None:
    """Rebuild every metric, figure and report.html from a run folder's scores, without loading a model."""
    import pandas as pd

    from calibtune.config import load_config
    from calibtune.results import write_results

    scores_path = run_dir / "scores.parquet"
    if not scores_path.is_file():
        raise CalibtuneError(f"{scores_path} not found: is {run_dir} a run folder?")
    cfg = load_config(run_dir / "config.yaml")
    if fmt not in ("text", "markdown"):
        raise CalibtuneError(f"unknown format '{fmt}': use text or markdown")
    metrics = write_results(run_dir, cfg, pd.read_parquet(scores_path))
    if fmt == "markdown":
        info = json.loads((run_dir / "metrics.json").read_text())
        typer.echo(_markdown_metrics(metrics, info.get("paired", [])) + _markdown_datasets(info)
                   + _markdown_data_scale(info))
    else:
        _print_metrics(metrics)
    typer.echo(f"rebuilt {run_dir / 'report.html'}")


@app.command()
@_friendly
def compare(
    run_a: Annotated[Path, typer.Argument(help="The first run folder (A).")],
    run_b: Annotated[Path, typer.Argument(help="The second run folder (B).")],
    metric: Annotated[Optional[list[str]], typer.Option("--metric", help="Metrics to compare (repeat; default AUROC, ECE, Brier, AURC).")] = None,
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="text or markdown.")] = "text",
) -> None:
    """Metric differences B - A per cell of two runs, with bootstrap intervals (paired where the questions match)."""
    from calibtune.compare import DEFAULT_METRICS, compare_runs, format_comparison

    if fmt not in ("text", "markdown"):
        raise CalibtuneError(f"unknown format '{fmt}': use text or markdown")
    metrics = metric or list(DEFAULT_METRICS)
    table = compare_runs(run_a, run_b, metrics, resamples, seed)
    typer.echo(format_comparison(table, metrics, markdown=fmt == "markdown"))
    typer.echo(f"\nA = {run_a}, B = {run_b}; intervals: 95% bootstrap, * where they exclude 0")


from calibtune.cache_cli import cache_app  # noqa: E402 (the subcommands register on import)

app.add_typer(cache_app, name="cache")


def main() -> None:  # pragma: no cover - the console script entry point
    """Entry point for ``python -m calibtune``."""
    app(prog_name="calibtune")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
