"""Option parsing shared by the commands: comma lists, path and device checks, deprecated
spellings, and the typer options several commands declare alike."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from prunekit.errors import SettingsError


def split_commas(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def comma_ints(value: str | None, option: str, *, positive: bool = False) -> list[int]:
    """Comma-separated integers, or a one-line error naming ``option``."""
    try:
        numbers = [int(v) for v in split_commas(value)]
    except ValueError:
        raise SettingsError(f"{option} takes comma-separated integers, got {value!r}") from None
    if positive and any(n < 1 for n in numbers):
        raise SettingsError(f"{option} takes positive integers, got {value!r}")
    return numbers


def not_a_file(path: Path | None, option: str) -> None:
    """A directory option pointed at an existing file: refuse before any work."""
    if path is not None and path.exists() and not path.is_dir():
        raise SettingsError(f"{option} {path} is a file, not a directory")


def not_a_dir(path: Path | None, option: str) -> None:
    if path is not None and path.is_dir():
        raise SettingsError(f"{option} {path} is a directory; name a file")


def check_device(device: str | None) -> None:
    """A device torch does not know, or CUDA on a machine without it: one line, before loading."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise SettingsError(f"--device {device!r} is not a device; use cpu or cuda[:N]") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"--device {device}: CUDA is not available on this machine")


def given(ctx: typer.Context, name: str) -> bool:
    """Whether the user passed option ``name`` (command line or environment), not its default."""
    source = ctx.get_parameter_source(name)
    # By name: typer vendors its own click, whose ParameterSource is not click's.
    return source is not None and source.name != "DEFAULT"


def deprecated_option(ctx: typer.Context, old: str, new: str):
    """The value of option ``new`` (a flag), or of its deprecated spelling ``old`` with a
    one-line notice; both at once is an error."""
    old_param, new_param = (OPTION_PARAMS[flag] for flag in (old, new))
    if not given(ctx, old_param):
        return ctx.params[new_param]
    if given(ctx, new_param):
        raise SettingsError(f"{old} is the old spelling of {new}; give only {new}")
    print(f"warning: {old} is deprecated; use {new}", file=sys.stderr)
    return ctx.params[old_param]


# Deprecated prune spellings and their replacements: flag -> parameter name.
OPTION_PARAMS = {
    "--eval": "eval_ppl",
    "--ppl": "ppl",
    "--eval-seqlen": "eval_seqlen",
    "--ppl-seqlen": "ppl_seqlen",
    "--eval-max-windows": "eval_max_windows",
    "--ppl-max-windows": "ppl_max_windows",
}


ModelOpt = typer.Option(
    None, "--model", "-m", help="Model: smollm2-135m, a hub id, a local directory or a .gguf file."
)


DtypeOpt = typer.Option(
    "auto", help="auto (bf16 where the CPU/GPU runs it natively, else fp32), fp32, bf16 or fp16."
)


DeviceOpt = typer.Option(None, help="cpu or cuda[:N]; default cuda when available.")


AttnOpt = typer.Option(
    None,
    "--attn-implementation",
    help="Attention kernel: sdpa, eager, flash_attention_2 ... (default: transformers' choice).",
)


ForceOpt = typer.Option(
    False,
    "--force",
    help="Replay the plan even on a base model whose weights differ from the ones it was made "
    "for (recorded in the output as forced_model_mismatch).",
)


TasksOpt = typer.Option(
    None,
    help="Zero-shot tasks (lm-eval, 0-shot), comma-separated: piqa, winogrande, hellaswag, "
    "arc_easy, arc_challenge, boolq. Needs the 'eval' extra.",
)


LimitOpt = typer.Option(
    None, min=1, help="Zero-shot: only the first N items of each task (recorded)."
)


TaskDataOpt = typer.Option(
    None,
    help="Offline task files (the tasks/ folder, or a data folder holding it); "
    "default $PRUNEKIT_DATA_DIR/tasks, else lm-eval's hub tasks.",
)
