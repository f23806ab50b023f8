"""The ``onnx-compress`` command: flags -> Recipe -> compress_file -> summary."""

from __future__ import annotations

__all__ = ["build_recipe", "main"]

import argparse
import dataclasses
import logging
import sys
import traceback
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from onnx_compress.calibration.data import DEFAULT_SAMPLES, DEFAULT_SEQLEN, TextCalibration, load_npz
from onnx_compress.errors import OnnxCompressError, OutputPathError, RecipeError
from onnx_compress.recipe import (
    DEFAULT_RECIPE,
    AccuracyLevel,
    ActCalib,
    AttentionTarget,
    Awq,
    FuseAttention,
    QuantizeWeights,
    Recipe,
    Smooth,
    Sparsify,
    SparsityMethod,
    Verify,
    WeightFormat,
    WeightScheme,
)

logger = logging.getLogger("onnx_compress")

EPILOG = """\
examples:
  onnx-compress model.onnx model-int8.onnx
      the default recipe: INT8 per-channel weights as DequantizeLinear -> MatMul (runs on any
      ONNX Runtime, and TensorRT), lm_head kept float, output verified against the input
  onnx-compress model.onnx out.onnx --quantize int8 --block-size 32
      one scale per 32 weights along K (lower error, needs opset 21: upgraded if older)
  onnx-compress model.onnx out.onnx --format matmulnbits --accuracy-level 4
      ORT's fused com.microsoft.MatMulNBits kernel (bits=8)
  onnx-compress model.onnx out.onnx --quantize int4
      blockwise INT4 (block 128, symmetric, ORT-exact) as DequantizeLinear -> MatMul, lm_head int8
  onnx-compress model.onnx out.onnx --quantize nf4 --double-quant
      bitsandbytes NF4 (block 64) in our NF4MatMul op (needs our runtime library; see below)
  onnx-compress model.onnx out.onnx --quantize nf4 --format bnb4
      NF4 in stock ORT's com.microsoft.MatMulBnb4
  onnx-compress model.onnx out.onnx --quantize int4 --max-layer-error 0.15 --report r.json
      layers whose 4-bit output error exceeds 15% fall back to int8 (then float)
  onnx-compress model.onnx out.onnx --quantize int4 --awq --calib-text docs/ --tokenizer tokenizer.json
      AWQ scales searched on 128 x 512 tokens of text, folded into the norms, then int4 as usual
      (add --calib-stats stats.npz to reuse the activation statistics across runs)
  onnx-compress model.onnx out.onnx --sparsify 2:4 --calib-text docs/ --tokenizer tokenizer.json
      2:4 sparsity along each weight's reduction axis, mask by Wanda on the calibration text
      (magnitude without calibration data), annotated for TensorRT, then INT8 (keeps the zeros)
  onnx-compress model.onnx out.onnx --quantize w8a8 --smooth 0.9 --calib-text docs/ --tokenizer tokenizer.json
      static INT8 activations (per tensor, 99.99th percentile) and INT8 weights as QDQ pairs
      around each MatMul (ORT CPU fuses them; TensorRT's explicit quantization), after
      SmoothQuant moved the activation outliers into the weights (--format qlinear: QLinearMatMul)
  onnx-compress check-sparsity model.onnx [--json]
      recompute every weight's 2:4 pattern and compare it with the annotations
  onnx-compress model.onnx out.onnx --exclude 'lm_head|embed' --report report.json
  onnx-compress model.onnx out.onnx --target ort-cpu --no-quantize
      only fuse attention (MultiHeadAttention for ORT CPU), weights untouched
  onnx-compress inspect model.onnx [--target ort-cuda]
      list each attention block, what it would become, or why it is not fused
  onnx-compress --print-recipe --block-size 64 > recipe.toml
  onnx-compress model.onnx out.onnx --recipe recipe.toml

exit codes: 0 ok, 1 internal error, 2 bad options or recipe, 3 unreadable input model,
  4 unsupported model, 5 unusable output path, 6 verification failed, 7 bad input data,
  8 custom-op library missing or not loadable.
  On any error nothing is written and the input is untouched.
"""

# Flags that describe the quantize step; they cannot be combined with --recipe.
_STEP_FLAGS = (
    "quantize",
    "format",
    "block_size",
    "asymmetric",
    "double_quant",
    "exclude",
    "int8",
    "min_dim",
    "accuracy_level",
    "max_layer_error",
    "target",
    "fuse_attention",
    "no_quantize",
    "awq",
    "act_calib",
    "percentile",
    "smooth",
    "sparsify",
    "sparsify_method",
    "sparsify_min_dim",
    "sparsify_exclude",
)


_ATTENTION_FLAGS = ("target", "fuse_attention", "no_quantize")

_CUSTOM_OPS_HINT = """\
this model uses onnx_compress custom ops (NF4MatMul / Int8MatMul): ONNX Runtime needs our library
  python: from onnx_compress import runtime; session = runtime.inference_session("{model}")
          (CUDA: providers=["CUDAExecutionProvider"]; or runtime.session_options() for your own)
  any ORT API: SessionOptions.register_custom_ops_library(<path>), path from
          python -c 'from onnx_compress import runtime; print(runtime.library_path())'"""


def _version() -> str:
    try:
        return metadata.version("onnx-compress")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="onnx-compress",
        description="Compress an ONNX transformer model for ONNX Runtime and TensorRT "
        "(weight quantization; more passes to come), verify it, and write it atomically.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", nargs="?", help="input .onnx model (external data next to it is found)")
    p.add_argument("output", nargs="?", help="output .onnx path (must differ from the input)")
    q = p.add_argument_group("quantization")
    q.add_argument(
        "--quantize", choices=[s.value for s in WeightScheme], default=None, help="weight number format (default: int8)"
    )
    q.add_argument(
        "--format",
        choices=[f.value for f in WeightFormat],
        default=None,
        help="graph form: qdq = DequantizeLinear->MatMul (default for int8/int4; portable, TensorRT); "
        "matmulnbits = com.microsoft.MatMulNBits (ORT); custom = onnx_compress.NF4MatMul/Int8MatMul "
        "(our runtime library; default for nf4); bnb4 = com.microsoft.MatMulBnb4 (stock ORT, nf4)",
    )
    q.add_argument(
        "--block-size",
        type=int,
        default=None,
        metavar="N",
        help="weights per scale along K. int8: 0 = per output channel (default) or a power of two >= 16; "
        "int4/nf4: a power of two in [32, 256] (default 128 / 64)",
    )
    q.add_argument(
        "--asymmetric",
        action="store_true",
        default=None,
        help="int4: ORT's asymmetric formula (zero points) instead of symmetric",
    )
    q.add_argument(
        "--double-quant",
        action="store_true",
        default=None,
        help="nf4 with --format custom: absmax in 8 bits per 256 blocks (QLoRA; 0.127 instead of 0.5 bits/weight)",
    )
    q.add_argument(
        "--exclude",
        action="append",
        default=None,
        metavar="REGEX",
        help="keep layers whose name matches float (repeatable; default: lm_head; --exclude '' keeps nothing float)",
    )
    q.add_argument(
        "--int8",
        action="append",
        default=None,
        metavar="REGEX",
        help="with int4/nf4: quantize matching layers to int8 instead (repeatable; default: lm_head; "
        "--int8 '' for none)",
    )
    q.add_argument(
        "--max-layer-error",
        type=float,
        default=None,
        metavar="E",
        help="a layer whose relative output error on the verification inputs exceeds E (e.g. 0.05) "
        "falls back to int8, then float (listed in the report)",
    )
    q.add_argument(
        "--min-dim", type=int, default=None, metavar="N", help="keep layers with K or N below N float (default: 16)"
    )
    q.add_argument(
        "--accuracy-level",
        type=int,
        choices=[int(a) for a in AccuracyLevel],
        default=None,
        help="MatMulNBits accuracy_level (default 4: int8 activations, ORT CPU's fast path)",
    )
    w = p.add_argument_group("w8a8 (static int8 activations; needs calibration data)")
    w.add_argument(
        "--act-calib",
        choices=[c.value for c in ActCalib],
        default=None,
        help="activation range rule: minmax, percentile (default, 99.99) or entropy (TensorRT's KL)",
    )
    w.add_argument("--percentile", type=float, default=None, metavar="P", help="percentile of |x| (default 99.99)")
    w.add_argument(
        "--smooth",
        type=float,
        default=None,
        metavar="ALPHA",
        help="SmoothQuant: move activation outliers into the weights, s = max|x|^a / max|w|^(1-a) "
        "(0.5 in the SmoothQuant paper, 0.9 measured best on SmolLM2; folded into the producers, "
        "checked on the float model)",
    )
    a = p.add_argument_group("attention")
    a.add_argument(
        "--fuse-attention",
        dest="fuse_attention",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fuse attention subgraphs into the target's attention op (default: on)",
    )
    a.add_argument(
        "--target",
        choices=[t.value for t in AttentionTarget],
        default=None,
        help="runtime the model is for: ort-cuda (default; GroupQueryAttention/MultiHeadAttention), "
        "ort-cpu (MultiHeadAttention), tensorrt / onnx (ONNX Attention, opset 23); the ort targets "
        "also get ORT's fused norm and rotary kernels",
    )
    q.add_argument("--no-quantize", action="store_true", default=None, help="leave the weights float")
    sp = p.add_argument_group("2:4 sparsity")
    sp.add_argument(
        "--sparsify",
        choices=["2:4"],
        default=None,
        help="prune 2 of every 4 weights along each layer's reduction axis (dense storage with explicit zeros, "
        "annotated for TensorRT SPARSE_WEIGHTS); runs before quantization",
    )
    sp.add_argument(
        "--sparsify-method",
        choices=[m.value for m in SparsityMethod],
        default=None,
        help="mask rule: wanda (|w| * ||x||, the default with calibration data) or magnitude (the default without)",
    )
    sp.add_argument(
        "--sparsify-min-dim",
        type=int,
        default=None,
        metavar="N",
        help="keep layers with K or N below N dense (default 256)",
    )
    sp.add_argument(
        "--sparsify-exclude",
        action="append",
        default=None,
        metavar="REGEX",
        help="keep matching weights dense (repeatable; default: lm_head, embed)",
    )
    c = p.add_argument_group("calibration (AWQ, wanda)")
    c.add_argument(
        "--awq",
        action="store_true",
        default=None,
        help="activation-aware weight scaling before quantizing (AutoAWQ's search; needs calibration data); "
        "the output has the same ops as without it",
    )
    c.add_argument(
        "--calib-data",
        type=Path,
        metavar="NPZ",
        help="calibration samples: one .npz (a dict of model inputs) or a folder of them; "
        "the first four also verify the output",
    )
    c.add_argument(
        "--calib-text", type=Path, metavar="PATH", help="calibration text: a file, or a folder of .txt/.rst/.md files"
    )
    c.add_argument("--tokenizer", type=Path, metavar="JSON", help="tokenizer.json for --calib-text")
    c.add_argument(
        "--calib-samples",
        type=int,
        default=None,
        metavar="N",
        help=f"windows of text to calibrate on (default {DEFAULT_SAMPLES})",
    )
    c.add_argument(
        "--calib-seqlen",
        type=int,
        default=None,
        metavar="L",
        help=f"tokens per window (default {DEFAULT_SEQLEN}, or the model's fixed sequence length if shorter)",
    )
    c.add_argument(
        "--calib-stats",
        type=Path,
        metavar="NPZ",
        help="cache of the activation statistics: read if it exists (refused for another model), "
        "else collected and written there",
    )
    r = p.add_argument_group("recipe")
    r.add_argument("--recipe", type=Path, metavar="TOML", help="read the steps from a recipe file")
    r.add_argument("--print-recipe", action="store_true", help="print the effective recipe as TOML and exit")
    v = p.add_argument_group("verification and output")
    v.add_argument("--no-verify", action="store_true", help="skip the checker, ORT load and output-parity checks")
    v.add_argument(
        "--verify-tolerance",
        type=float,
        default=None,
        metavar="X",
        help="max relative L2 error of each output vs the input model (default per scheme)",
    )
    v.add_argument("--report", type=Path, metavar="JSON", help="write the full report as JSON")
    ext = v.add_mutually_exclusive_group()
    ext.add_argument(
        "--external-data",
        dest="external_data",
        action="store_true",
        default=None,
        help="always write weights to <output>.data",
    )
    ext.add_argument(
        "--no-external-data",
        dest="external_data",
        action="store_false",
        help="write a single .onnx file (fails above 2 GB)",
    )
    o = p.add_argument_group("output")
    o.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    o.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    o.add_argument("--version", action="version", version=f"onnx-compress {_version()}")
    return p


def build_recipe(args: argparse.Namespace) -> Recipe:
    """Turn parsed flags into a Recipe (the CLI's only job besides I/O)."""
    given = {name: getattr(args, name) for name in _STEP_FLAGS if getattr(args, name) is not None}
    if args.recipe is not None:
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise RecipeError(f"{flags} cannot be combined with --recipe; put them in the recipe file")
        recipe = Recipe.load(args.recipe)
    else:
        fields: dict[str, Any] = {}
        if "quantize" in given:
            fields["scheme"] = WeightScheme(given["quantize"])
        if "format" in given:
            fields["format"] = WeightFormat(given["format"])
        if "block_size" in given:
            fields["block_size"] = given["block_size"]
        if "asymmetric" in given:
            fields["symmetric"] = False
        if "double_quant" in given:
            fields["double_quant"] = True
        if "exclude" in given:
            fields["exclude"] = tuple(p for p in given["exclude"] if p)
        if "int8" in given:
            fields["int8"] = tuple(p for p in given["int8"] if p)
        if "max_layer_error" in given:
            fields["max_layer_error"] = given["max_layer_error"]
        if "min_dim" in given:
            fields["min_dim"] = given["min_dim"]
        if "accuracy_level" in given:
            fields["accuracy_level"] = AccuracyLevel(given["accuracy_level"])
        if "act_calib" in given:
            fields["act_calib"] = ActCalib(given["act_calib"])
        if "percentile" in given:
            fields["percentile"] = given["percentile"]
        steps: list[Any] = []
        sparsify_flags = [k for k in ("sparsify_method", "sparsify_min_dim", "sparsify_exclude") if k in given]
        if "sparsify" in given:
            sparse_fields: dict[str, Any] = {"pattern": given["sparsify"]}
            if "sparsify_method" in given:
                sparse_fields["method"] = SparsityMethod(given["sparsify_method"])
            if "sparsify_min_dim" in given:
                sparse_fields["min_dim"] = given["sparsify_min_dim"]
            if "sparsify_exclude" in given:
                sparse_fields["exclude"] = tuple(p for p in given["sparsify_exclude"] if p)
            steps.append(Sparsify(**sparse_fields))
        elif sparsify_flags:
            flags = ", ".join("--" + k.replace("_", "-") for k in sparsify_flags)
            raise RecipeError(f"{flags} only apply with --sparsify 2:4")
        if "smooth" in given:
            steps.append(Smooth(alpha=given["smooth"]))
        if given.get("awq"):
            if given.get("no_quantize"):
                raise RecipeError("--awq prepares weights for quantization; it cannot be combined with --no-quantize")
            steps.append(Awq())
        if given.get("fuse_attention", True):
            target = AttentionTarget(given["target"]) if "target" in given else AttentionTarget.ORT_CUDA
            steps.append(FuseAttention(target=target))
        elif "target" in given:
            raise RecipeError("--target has no effect with --no-fuse-attention")
        if given.get("no_quantize"):
            if fields:
                flags = ", ".join(
                    "--" + k.replace("_", "-")
                    for k in given
                    if k not in (*_ATTENTION_FLAGS, "awq", "smooth") and not k.startswith("sparsify")
                )
                raise RecipeError(f"{flags} cannot be combined with --no-quantize")
        else:
            steps.append(QuantizeWeights(**fields))
        recipe = dataclasses.replace(DEFAULT_RECIPE, steps=tuple(steps))
    verify: Verify = recipe.verify
    if args.no_verify:
        verify = dataclasses.replace(verify, enabled=False)
    if args.verify_tolerance is not None:
        verify = dataclasses.replace(verify, tolerance=args.verify_tolerance)
    return dataclasses.replace(recipe, verify=verify)


def calibration_source(args: argparse.Namespace) -> Any:
    """The calibration samples the flags name (None without any)."""
    text_flags = {
        "--tokenizer": args.tokenizer,
        "--calib-samples": args.calib_samples,
        "--calib-seqlen": args.calib_seqlen,
    }
    if args.calib_data is not None and args.calib_text is not None:
        raise RecipeError("give either --calib-data or --calib-text, not both")
    if args.calib_text is None:
        stray = [flag for flag, value in text_flags.items() if value is not None]
        if stray:
            raise RecipeError(f"{', '.join(stray)} only apply with --calib-text")
        return load_npz(args.calib_data) if args.calib_data is not None else None
    if args.tokenizer is None:
        raise RecipeError("--calib-text needs --tokenizer tokenizer.json (the model's tokenizer)")
    for flag in ("--calib-samples", "--calib-seqlen"):
        value = text_flags[flag]
        if value is not None and value < 1:
            raise RecipeError(f"{flag} must be >= 1, got {value}")
    return TextCalibration(args.calib_text, args.tokenizer, args.calib_samples, args.calib_seqlen)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("onnx-compress: %(levelname)s: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def _progress(quiet: bool) -> Any:
    if quiet or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; this only guards odd environments
        return None
    return lambda it, **kw: tqdm(it, file=sys.stderr, leave=False, **kw)


def _inspect(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="onnx-compress inspect",
        description="List each attention block of a model: what the fusion would lower it to, "
        "its mask class, or the reason it is not fused. Nothing is written.",
    )
    p.add_argument("model", help="input .onnx model")
    p.add_argument("--target", choices=[t.value for t in AttentionTarget], default=AttentionTarget.ORT_CUDA.value)
    p.add_argument("--json", action="store_true", help="print the blocks as JSON")
    args = p.parse_args(argv)
    _setup_logging(0, False)
    try:
        import json

        from onnx_compress import model_io
        from onnx_compress.attention.fuse import find_blocks, format_blocks

        reports = find_blocks(model_io.load(args.model), AttentionTarget(args.target))
        if args.json:
            print(json.dumps([r.to_dict() for r in reports], indent=2))
        else:
            print(format_blocks(reports))
        return 0
    except OnnxCompressError as e:
        logger.error("%s", e)
        return e.exit_code


def _check_sparsity(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="onnx-compress check-sparsity",
        description="Recompute the 2:4 pattern of every MatMul/Gemm/Conv weight from its stored data and "
        "compare it with the onnx_compress.sparsity annotations. Exit 0 when they agree, 6 when a tensor "
        "is annotated but not 2:4 or 2:4 but not annotated. Nothing is written.",
    )
    p.add_argument("model", help="input .onnx model")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    _setup_logging(0, False)
    try:
        from onnx_compress import model_io
        from onnx_compress.errors import VerificationError
        from onnx_compress.sparsity.check import check_sparsity

        result = check_sparsity(model_io.load(args.model))
        print(result.to_json() if args.json else result.format_text())
        return 0 if result.ok else VerificationError.exit_code
    except OnnxCompressError as e:
        logger.error("%s", e)
        return e.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["inspect"]:
        return _inspect(argv[1:])
    if argv[:1] == ["check-sparsity"]:
        return _check_sparsity(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        calibrated = any(x is not None for x in (args.calib_data, args.calib_text, args.calib_stats))
        recipe = build_recipe(args).resolved(calibrated=calibrated)
        if args.print_recipe:
            sys.stdout.write(recipe.to_toml())
            return 0
        if args.input is None or args.output is None:
            parser.error("give an input and an output model path (or --print-recipe)")
        from onnx_compress.api import compress_file  # heavy imports only when there is work

        if args.calib_stats is not None and not recipe.needs_calibration:
            raise RecipeError(
                "--calib-stats only applies with a step that calibrates (--awq, --smooth, --quantize w8a8, "
                "--sparsify with wanda)"
            )
        report = compress_file(
            args.input,
            args.output,
            recipe,
            calibration_source(args),
            progress=_progress(args.quiet),
            external_data=args.external_data,
            calibration_stats=args.calib_stats,
        )
        if args.report is not None:
            try:
                args.report.write_text(report.to_json() + "\n", encoding="utf-8")
            except OSError as e:
                raise OutputPathError(f"cannot write report '{args.report}': {e.strerror or e}") from e
        if not args.quiet:
            print(report.format_table())
            print(f"wrote {args.output}")
            if any(r.quantized and r.format == WeightFormat.CUSTOM.value for r in report.layers):
                print(_CUSTOM_OPS_HINT.format(model=args.output))
        return 0
    except OnnxCompressError as e:
        logger.error("%s", e)
        if args.verbose:
            traceback.print_exc()
        return e.exit_code
    except KeyboardInterrupt:
        logger.error("interrupted; nothing was written")
        return 130
    except Exception as e:  # a bug: one line by default, the traceback with -v
        logger.error(
            "internal error: %s: %s (run with -v for the traceback and please report it)",
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else "",
        )
        if args.verbose:
            traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
