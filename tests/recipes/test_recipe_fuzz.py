"""Fuzzed bad input: generated recipe files and -o overrides through the real CLI entry point.

Every case either validates (exit 0, and the resolved recipe survives the params.json round trip a stage reads) or
ends with exactly one line on stderr and exit code 2: no traceback, no other exit code. Cases run in-process through
`gemctl.cli.main` (its error handling is what users see); a few fixed cases also run the installed `gemctl`. The
schema is checked with `recipe validate --schema-only`; a recipe that fits it then goes through the checks against
this machine too, with the hub offline: they report, never crash.
"""

import contextlib
import io
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gemctl import cli
from gemctl.recipe import Recipe, from_params, resolve, write_params
from gemctl.schema import dotted_keys, flatten
from tests.pipeline.project_copy import GEMCTL

ROOT = Path(__file__).resolve().parents[2]
FUZZ_CASES = settings.get_profile("gemctl-fuzz").max_examples  # GEMCTL_FUZZ_CASES (tests/recipes/conftest.py)
NAMES = ("a", "b", "c")  # recipe files of a generated case; `a` is the one validated
KEYS = dotted_keys(Recipe)
LEAVES = flatten(Recipe().to_dict())  # dotted key -> default value


@pytest.fixture(scope="module", autouse=True)
def machine_checks_offline():
    """The machine checks of fuzzed recipes never ask the network (most name the default model's hub id), nor
    SLURM (the cluster rule has its own property test, test_preflight_properties.py, without a subprocess a case)."""
    from huggingface_hub import constants

    from gemctl import preflight

    saved = constants.HF_HUB_OFFLINE, preflight.slurm_answers
    constants.HF_HUB_OFFLINE, preflight.slurm_answers = True, lambda: False
    yield
    constants.HF_HUB_OFFLINE, preflight.slurm_answers = saved


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A bare project (dvc.yaml + recipes/) the cases write their recipes into."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "recipes").mkdir()
    old = os.environ.get("GEMCTL_PROJECT")
    os.environ["GEMCTL_PROJECT"] = str(root)
    yield root
    if old is None:
        os.environ.pop("GEMCTL_PROJECT")
    else:
        os.environ["GEMCTL_PROJECT"] = old


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`gemctl ARGV` in this process, through cli.main (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["gemctl", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return code, out.getvalue(), err.getvalue()


def check_outcome(project: Path, argv: list[str], overrides: list[str], tally: dict[str, int]) -> None:
    code, out, err = run_cli(argv)
    tally["valid" if code == 0 else "refused"] += 1
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert "Traceback" not in err and "pydantic" not in err and "errors.pydantic.dev" not in err, err
        return
    assert code == 0, f"exit {code}: {err}"
    assert not lines, err
    # valid: what a stage reads back (params.json) is the same recipe, with the same hash
    recipe = resolve(project / "recipes", "a", overrides)
    params = project / "params.json"
    write_params(params, recipe)
    back = from_params(params)
    assert back == recipe and back.content_hash == recipe.content_hash
    # and the checks against this machine report on it (exit 0 or one line and 2), whatever paths it holds
    code, out, err = run_cli([a for a in argv if a != "--schema-only"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert "checks against this machine" in out and (code, len(lines)) in ((0, 0), (2, 1)), f"exit {code}: {err}"


# --- values --------------------------------------------------------------------------------------------------------
ODD_TEXT = ["", " ", "3", "3e-5", "1e400", "-0", "nan", ".nan", "inf", ".inf", "-.inf", "yes", "on", "~", "null",
            "2024-01-01", "0x1F", "0o17", "1_000", "[a", "{", "a: b", "'", '"', "\\", "\t", "\u2028", "\x1b[31m",
            "[/red]", "[bold]x", "é", "日本", "\U0001f600", "\ufeff", "a\nb", "%NN", "&a", "*a", "!!str", "${x}"]
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6), st.integers(), st.integers(min_value=10**18, max_value=10**400),
    st.floats(), st.floats(allow_nan=False, allow_infinity=False, min_value=-2.0, max_value=2.0),
    st.sampled_from(ODD_TEXT), st.text(max_size=12),
    st.sampled_from(["ddp", "fsdp", "deepspeed_zero2", "pixel", "latent", "flow", "connector", "language", "front",
                     "wrist", "files", "synth", "cpu", "bf16", "cosine", "previous", "base", "mean_std"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=6) | st.sampled_from([k.rsplit(".", 1)[-1] for k in KEYS]), inner, max_size=3), max_leaves=6)


@st.composite
def near_valid(draw, key: str):
    """A value of the right kind for `key`, near its default: hits ranges, multiples and cross-field rules."""
    default = LEAVES.get(key)
    if isinstance(default, bool):
        return draw(st.sampled_from([not default, default, 0, 1, "true"]))
    if isinstance(default, int):
        return draw(st.sampled_from([0, -1, 1, 2, 3, 31, 32, 33, 48, 64, 1000, 10**9, default, default + 1,
                                     default * 2, default // 2, float(default)]))
    if isinstance(default, float):
        return draw(st.sampled_from([0, 0.0, -1e-9, 1, 1.0, 1.5, 1e-5, 2**31, default, default * 2, -default]))
    if isinstance(default, list):
        return draw(st.sampled_from([[], default, default * 2, default[:1], [default], "front", [1, 2]]))
    return draw(values)


@st.composite
def keys(draw) -> str:
    key = draw(st.sampled_from(KEYS))
    how = draw(st.sampled_from(["valid", "valid", "valid", "typo", "extend", "random", "odd"]))
    if how == "typo" and key:
        i = draw(st.integers(0, len(key) - 1))
        key = key[:i] + draw(st.sampled_from(["", "x", "_", ".", key[i] * 2])) + key[i + 1:]
    elif how == "extend":
        key = key + "." + draw(st.sampled_from(["x", "lr", "0", ""]))
    elif how == "random":
        key = draw(st.text(min_size=0, max_size=10))
    elif how == "odd":
        key = draw(st.sampled_from([key.rsplit(".", 1)[0] + ".", ""])) + draw(st.sampled_from(ODD_TEXT))
    return key


@st.composite
def settings_doc(draw) -> dict:
    """A recipe document: a few dotted keys set to near-valid or arbitrary values."""
    doc: dict = {}
    for _ in range(draw(st.integers(0, 4))):
        key = draw(keys())
        value = draw(near_valid(key) if key in LEAVES and draw(st.booleans()) else values)
        node = doc
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return doc


def _dump(doc, allow_unicode: bool, flow) -> str:
    return yaml.safe_dump(doc, allow_unicode=allow_unicode, default_flow_style=flow, sort_keys=False)


@st.composite
def recipe_text(draw, name: str) -> str | None:
    kind = draw(st.sampled_from(["settings"] * 6 + ["corrupt", "raw", "deep", "huge", "non-mapping", "absent"]))
    if kind == "absent":
        return None
    if kind == "raw":
        return draw(st.text(max_size=40))
    if kind == "deep":
        n = draw(st.sampled_from([50, 500, 5000]))
        return draw(st.sampled_from(["[" * n + "]" * n, "a: " + "{b: " * n + "1" + "}" * n,
                                     "seed: " + "[" * n + "]" * n, "description: " + "{b: " * n + "1" + "}" * n,
                                     "".join(f"{' ' * i}k{i}:\n" for i in range(min(n, 400))) + " " * 400 + "x: 1"]))
    if kind == "huge":
        return draw(st.sampled_from(["seed: 1" + "0" * 5000, "stages: {stage1: {lr: 1" + "0" * 400 + ".5}}",
                                     "seed: " + "9" * 4000, "description: " + "x" * 100_000]))
    if kind == "non-mapping":
        return draw(st.sampled_from(["- a\n- b\n", "3\n", "'text'\n", "null\n", "---\na: 1\n---\nb: 2\n", "...\n",
                                     "[seed, 1]\n", "!!binary aGk=\n", "? [a, b]\n: c\n", "&a [*a]\n"]))
    doc = draw(settings_doc())
    parent = draw(st.one_of(st.none(), st.sampled_from([*NAMES, "missing", "", name, "../a", "a.yaml"]), values))
    if parent is not None:
        doc = {"extends": parent, **doc}
    text = _dump(doc, draw(st.booleans()), draw(st.sampled_from([None, True, False])))
    if kind == "corrupt":
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.sampled_from(["", "\t", ":", ": :", "{", "]", "&x ", "*x", "!!python/object:os.system",
                                                 "\x00", "\ufeff", "- ", "\n  - ", "'", "%YAML 9\n"])) + text[i + 1:]
    return text


@settings(settings.get_profile("gemctl-fuzz"), max_examples=max(1, FUZZ_CASES // 2))
@given(data=st.data())
def test_fuzzed_recipe_files_validate_or_fail_in_one_line(project, fuzz_cases, fuzz_outcomes, data):
    recipes = project / "recipes"
    for name in NAMES:
        text = data.draw(recipe_text(name) if name != "a" else recipe_text(name).filter(lambda t: t is not None),
                         label=f"{name}.yaml")
        path = recipes / f"{name}.yaml"
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(text.encode("utf-8", "surrogatepass"))
    check_outcome(project, ["recipe", "validate", "a", "--schema-only"], [], fuzz_outcomes)
    fuzz_cases["files"] += 1


@st.composite
def override(draw) -> str:
    kind = draw(st.sampled_from(["value"] * 5 + ["text", "malformed"]))
    if kind == "malformed":
        return draw(st.sampled_from(["", "=", "=1", "seed", "a..b=1", ".seed=1", "seed.=1", " =1", "seed==1",
                                     "stages.stage3.lr", "\x00=1"])) + draw(st.sampled_from(["", "x"]))
    key = draw(keys())
    if kind == "text":
        return f"{key}={draw(st.text(max_size=12))}"
    value = draw(near_valid(key) if key in LEAVES else values)
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=draw(st.booleans()), width=math.inf)
    return f"{key}={text.removesuffix(chr(10)).removesuffix('...').strip()}"


@settings(settings.get_profile("gemctl-fuzz"), max_examples=max(1, FUZZ_CASES - FUZZ_CASES // 2))
@given(overrides=st.lists(override(), min_size=1, max_size=4),
       name=st.sampled_from(["a", "a", "a", "tni", "a/../a", "", "\u00e9"]))
def test_fuzzed_overrides_validate_or_fail_in_one_line(project, fuzz_cases, fuzz_outcomes, overrides, name):
    shutil.copy(ROOT / "recipes" / "tiny.yaml", project / "recipes" / "a.yaml")
    argv = ["recipe", "validate", name, "--schema-only", *(f"--override={o}" for o in overrides)]
    check_outcome(project, argv, overrides, fuzz_outcomes)
    fuzz_cases["overrides"] += 1


# --- the installed command, as a cross-check of the in-process runs -------------------------------------------------
CROSS_CHECK = [
    ("a.yaml", "stages: {stage3: {lrr: 1}}\n", [], "unknown key 'stages.stage3.lrr': did you mean 'lr'?"),
    ("a.yaml", "extends: a\n", [], "recipe 'a' extends itself through a -> a"),
    ("a.yaml", "seed: 1" + "0" * 5000 + "\n", [], "recipe file a.yaml holds a number with more than 4300 digits"),
    ("a.yaml", "seed: " + "[" * 990 + "]" * 990 + "\n", [], "recipe 'a': seed=[[[[...]]]] is not an integer"),
    ("a.yaml", "seed: 1\n  x: [\n", [], "recipe file a.yaml is not valid YAML (line 2): fix the syntax"),
    ("a.yaml", "[" * 5000 + "]" * 5000, [], "is not valid YAML"),
    ("a.yaml", "- a\n", [], "must be a mapping of settings, got list"),
    ("a.yaml", "seed: 1\n", ["runtime.distributed=fsdp"], "runtime.distributed='fsdp' is not allowed"),
    ("a.yaml", "seed: 1\n", ["[/red]=1"], "unknown key '[/red]' in override '[/red]=1': valid keys: name, "),
    ("a.yaml", "data: {cameras: [/red]}\n", [], "data: cameras has unknown camera '/red'"),
    ("a.yaml", "seed: 1\n", ["stages.stage1.lr=.nan"], "stages.stage1.lr=nan is not a finite number"),
]


@pytest.mark.parametrize("file, text, overrides, message", CROSS_CHECK)
def test_installed_gemctl_fails_in_one_line(project, file, text, overrides, message):
    (project / "recipes" / file).write_text(text)
    exe = GEMCTL if Path(GEMCTL).is_file() else pytest.fail("gemctl is not installed beside this Python (pip install -e .)")
    argv = ["recipe", "validate", "a", *(f"--override={o}" for o in overrides)]
    r = subprocess.run([exe, *argv], capture_output=True, text=True, env={**os.environ, "COLUMNS": "40"})
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
    assert (r.returncode, r.stderr) == run_cli(argv)[::2]


def test_markup_like_key_prints_as_text(project):
    # found by the fuzzer: rich read the key as a closing tag and crashed cli.main with a traceback
    shutil.copy(ROOT / "recipes" / "tiny.yaml", project / "recipes" / "a.yaml")
    code, _, err = run_cli(["recipe", "validate", "a", "--override=name.[/red]=null"])
    assert code == 2 and err.strip() == ("error: unknown key 'name.[/red]' in override 'name.[/red]=null': name is "
                                         "a single setting with no keys below it: write name=VALUE")
