"""A config file is untrusted input: reading one ends in a config or in one line naming it.

Specification of :func:`maskformer_d2.config.load_config` (what ``train_net.py``, ``demo/demo.py``
and the tools read configs with):

* list expressions (``!!python/object/apply:eval``) are evaluated within budgets: steps for all the
  expressions of a config together, 64-bit integers, ``round`` digits, nesting, length; the
  official ones still give the lists Python gives;
* a YAML alias bomb (or an alias inside its own anchor) is refused before detectron2 sees it;
* a ``_BASE_`` is a regular ``.yaml``/``.yml`` file, local unless remote configs are allowed
  (``--allow-remote-config`` / ``MASKFORMER_D2_ALLOW_REMOTE_CONFIG=1``), and errors never quote a
  file's content; a file is at most 1 MiB;
* every value is one ``cfg.dump()`` can write.
"""
import os
import re
import time
from pathlib import Path

import pytest
from _hostile import assert_refused, run_hostile
from test_remote_files import isolated, serving  # noqa: F401  (isolated is a fixture)

from maskformer_d2.config import (
    MAX_CONFIG_BYTES,
    MAX_EXPRESSION_STEPS,
    REMOTE_CONFIG_ENV,
    REMOTE_CONFIG_FLAG,
    evaluate_list_expression,
    load_config,
)
from maskformer_d2.engine import argument_parser, cli

REPO = Path(__file__).resolve().parents[1]
SECRET = "TOPSECRET-7f3a"  # content of files a hostile config points at; never in a message


# ----------------------------------------------------------------------------- list expressions
def _official_expressions():
    found = set()
    for path in (REPO / "configs").rglob("*.yaml"):
        found.update(re.findall(r'python/object/apply:eval \["(.*?)"\]', path.read_text()))
    return sorted(found)


def test_the_official_expressions_give_what_python_gives():
    expressions = _official_expressions()
    assert len(expressions) >= 5
    for text in expressions:
        assert evaluate_list_expression(text) == eval(text)  # noqa: S307 (trusted: our own configs)


def _squaring_chain(levels: int) -> str:
    text = "[2]"
    for _ in range(levels):
        text = f"[x * x for x in {text}]"
    return text


@pytest.mark.parametrize("expression, message", [
    ("[[x for x in range(100000)] for y in range(100000)]", f"more than {MAX_EXPRESSION_STEPS} steps"),
    ("[0 for x in range(100000) for y in range(100000)]", f"more than {MAX_EXPRESSION_STEPS} steps"),
    ("[x for x in range(10000000)]", "range of 10000000 numbers"),
    ("[round(1, -1000000000)]", "round()'s digits must be an integer in [-30, 30]"),
    ("[round(1.5, 1000000000)]", "round()'s digits must be an integer in [-30, 30]"),
    (_squaring_chain(6), "an integer of more than 64 bits"),  # 2 ** 64
    ("[4294967296 * 4294967296 * 2]", "an integer of more than 64 bits"),
    ("[int(1e300)]", "int(): an integer of more than 64 bits"),
    ("[123456789012345678901234567890]", "an integer of more than 64 bits"),
    (_squaring_chain(30), "nested more than 32 levels deep"),
    ("[" * 40 + "]" * 40, "nested more than 32 levels deep"),
    ("[" + "1, " * 1000 + "]", "longer than 2000 characters"),
    ("[x for x in range(3) if x]", "only 'for NAME in ...' comprehensions"),
    ("[(lambda: 1)()]", "only int(), float(), round() and range() may be called"),
    ("[x ** 2 for x in range(3)]", "the operator Pow is not allowed"),
    ("[1 / 0]", "ZeroDivisionError"),
    ("[x for x in 3]", "a comprehension may only iterate over a list or range()"),
    ("[range]", "name 'range' is not allowed"),
])
def test_expressions_over_a_budget_are_refused_quickly(expression, message):
    start = time.monotonic()
    with pytest.raises(ValueError) as e:
        evaluate_list_expression(expression)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert time.monotonic() - start < 5


def test_the_step_budget_is_for_all_the_expressions_of_a_config(tmp_path):
    half = f"[x for x in range({MAX_EXPRESSION_STEPS // 2 - 10})]"  # about 2 steps per element
    path = tmp_path / "two.yaml"
    path.write_text(f'INPUT:\n  MIN_SIZE_TRAIN: !!python/object/apply:eval ["{half}"]\n'
                    f'MODEL:\n  PIXEL_MEAN: !!python/object/apply:eval ["{half}"]\n')
    with pytest.raises(ValueError, match=rf"^config {re.escape(str(path))}: refused: the expression .* \(line 4\): "
                                         f"more than {MAX_EXPRESSION_STEPS} steps"):
        load_config(str(path))
    path.write_text(f'INPUT:\n  MIN_SIZE_TRAIN: !!python/object/apply:eval ["{half}"]\n')
    assert len(load_config(str(path)).INPUT.MIN_SIZE_TRAIN) == MAX_EXPRESSION_STEPS // 2 - 10


def test_overrides_that_yaml_cannot_write_are_named(tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text("MODEL:\n  SWIN:\n    QK_SCALE: null\n")
    with pytest.raises(ValueError, match=r"^--opts: MODEL\.SWIN\.QK_SCALE: a config value may hold .*, not a set$"):
        load_config(str(path), ["MODEL.SWIN.QK_SCALE", "({1, 2},)"], opts_name="--opts")


def test_expression_results_are_plain_lists_that_dump(tmp_path):
    path = tmp_path / "ranges.yaml"
    path.write_text('INPUT:\n  MIN_SIZE_TRAIN: !!python/object/apply:eval ["[range(3), (1, 2)]"]\n')
    cfg = load_config(str(path))
    assert list(cfg.INPUT.MIN_SIZE_TRAIN) == [[0, 1, 2], (1, 2)]
    assert "- - 0" in cfg.dump()  # detectron2's default_setup dumps the config: no RepresenterError


# ----------------------------------------------------------------------------- files
def _alias_bomb(levels: int = 30) -> str:
    lines = ["DATASETS:", "  TRAIN: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"  TEST{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _write_hostile(folder: Path, case: str) -> Path:
    """``folder/config.yaml`` for ``case``, plus the files it points at."""
    secret = folder / "secret.txt"
    secret.write_text(f"{SECRET}: 1\n")
    config = folder / "config.yaml"
    if case == "alias bomb":
        config.write_text(_alias_bomb())
    elif case == "recursive alias":
        config.write_text("MODEL:\n  PIXEL_MEAN: &x [1, *x]\n")
    elif case == "repeated expression":
        config.write_text('INPUT:\n  MIN_SIZE_TRAIN: &e !!python/object/apply:eval ["[x for x in range(40000)]"]\n'
                          "MODEL:\n  PIXEL_MEAN: [*e, *e, *e, *e]\n")
    elif case == "base outside yaml":
        config.write_text(f"_BASE_: {secret}\n")
    elif case == "base symlink":
        (folder / "base.yaml").symlink_to(secret)
        config.write_text("_BASE_: base.yaml\n")
    elif case == "base fifo":
        os.mkfifo(folder / "base.yaml")
        config.write_text("_BASE_: base.yaml\n")
    elif case == "base directory":
        (folder / "base.yaml").mkdir()
        config.write_text("_BASE_: [base.yaml]\n")
    elif case == "base missing":
        config.write_text("_BASE_: nowhere.yaml\n")
    elif case == "base url":
        config.write_text("_BASE_: https://127.0.0.1:9/configs/Base.yaml\n")
    elif case == "base cycle":
        config.write_text("_BASE_: config.yaml\n")
    elif case == "base number":
        config.write_text("_BASE_: 3\n")
    elif case == "too large":
        config.write_text("MODEL:\n  WEIGHTS: ''\n" + "#" * MAX_CONFIG_BYTES)
    elif case == "not a mapping":
        config.write_text(f"root:$6$salt:{SECRET}:19000:0:99999:7:::\n")
    elif case == "a scalar":
        config.write_text(f"{SECRET} is no config\n")
    elif case == "empty":
        config.write_text("")
    elif case == "not utf-8":
        config.write_bytes(b"MODEL:\n  WEIGHTS: '\xff\xfe'\n")
    elif case == "syntax error":
        config.write_text(f"MODEL:\n  PIXEL_MEAN: [1, 2\n  {SECRET}: 3\n")
    elif case == "too deep":
        config.write_text("MODEL:\n  PIXEL_MEAN: " + "[" * 1500 + "]" * 1500 + "\n")
    elif case == "a date":
        config.write_text("MODEL:\n  PIXEL_MEAN: [2001-12-14]\n")
    elif case == "a set":
        config.write_text("MODEL:\n  PIXEL_MEAN: [!!set {a: null}]\n")
    elif case == "python object":
        config.write_text(f"MODEL: !!python/object/apply:os.system ['touch {folder}/MARKER']\n")
    else:
        raise AssertionError(case)
    return config


HOSTILE = {  # case -> what the message says after "config <path>: "
    "alias bomb": "refused: its YAML anchors/aliases expand to more than",
    "recursive alias": "refused: a YAML alias refers to the anchor it is inside of",
    "repeated expression": "refused: a YAML alias repeats a python/object/apply:eval expression",
    "base outside yaml": "secret.txt: refused: a _BASE_ must be a .yaml/.yml config file",
    "base symlink": "_BASE_ {folder}/base.yaml: refused: a _BASE_ must be a .yaml/.yml config file",
    "base fifo": "_BASE_ {folder}/base.yaml: refused: not a regular file",
    "base directory": "_BASE_ {folder}/base.yaml: refused: not a regular file",
    "base missing": "_BASE_ {folder}/nowhere.yaml: no such file",
    "base url": "_BASE_ https://127.0.0.1:9/configs/Base.yaml: refused: remote configs are off; pass "
                "--allow-remote-config (or set MASKFORMER_D2_ALLOW_REMOTE_CONFIG=1)",
    "base cycle": "more than 32 config files through _BASE_ (a cycle?)",
    "base number": "_BASE_ (line 1) must be a file name or a list of file names",
    "too large": f"more than a config's limit of {MAX_CONFIG_BYTES}",
    "not a mapping": "line 1: not a config: a key there is not a name like MODEL or NUM_CLASSES",
    "a scalar": "not a config: a config is a YAML mapping of keys, this is a YAML scalar",
    "empty": "not a config: a config is a YAML mapping of keys, this is an empty file",
    "not utf-8": "not UTF-8 text (byte 19)",
    "syntax error": "not valid YAML (expected ',' or ']', but got ':' at line 3, column 17)",
    "too deep": "YAML nested too deeply",
    "a date": "MODEL.PIXEL_MEAN: a config value may hold numbers, strings, booleans, null and lists of "
              "those, not a date",
    "a set": "MODEL.PIXEL_MEAN: a config value may hold numbers, strings, booleans, null and lists of "
             "those, not a set",
    "python object": "refused: it is not plain YAML (could not determine a constructor for the tag "
                     "'tag:yaml.org,2002:python/object/apply:os.system' at line 1, column 8)",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_config_file_is_one_line_that_names_it(tmp_path, monkeypatch, case):
    monkeypatch.delenv(REMOTE_CONFIG_ENV, raising=False)
    config = _write_hostile(tmp_path, case)
    start = time.monotonic()
    with pytest.raises(ValueError) as e:
        load_config(str(config))
    message = str(e.value)
    assert time.monotonic() - start < 10
    assert message.startswith(f"config {config}: ") and "\n" not in message
    assert HOSTILE[case].format(folder=tmp_path) in message
    assert SECRET not in message and "root:" not in message
    assert not (tmp_path / "MARKER").exists()


# ----------------------------------------------------------------------------- remote _BASE_
BASE_YAML = "MODEL:\n  SEM_SEG_HEAD:\n    NUM_CLASSES: 19\n"


def test_a_remote_base_loads_only_when_allowed_and_lands_in_the_cache(isolated, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv(REMOTE_CONFIG_ENV, raising=False)
    routes = {"/cfg/Base-Remote.yaml": (200, {}, BASE_YAML.encode())}
    config = tmp_path / "config.yaml"
    with serving(routes) as (base, requests):
        config.write_text(f"_BASE_: {base}/cfg/Base-Remote.yaml\nMODEL:\n  MASK_FORMER:\n    DEC_LAYERS: 3\n")
        with pytest.raises(ValueError, match="refused: remote configs are off"):
            load_config(str(config))
        assert requests == []
        cfg = load_config(str(config), allow_remote=True)
        monkeypatch.setenv(REMOTE_CONFIG_ENV, "1")
        again = load_config(str(config))
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == again.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 19
    assert cfg.MODEL.MASK_FORMER.DEC_LAYERS == 3
    assert requests == ["/cfg/Base-Remote.yaml"]  # downloaded once, then read from the cache
    assert [p.name.endswith("-Base-Remote.yaml") for p in isolated["downloads"].iterdir()] == [True]


@pytest.mark.parametrize("route, url_path, message", [
    ("/cfg/base.yaml", "/cfg/%2e%2e/%2e%2e/base.yaml", "refused: the URL has a '..' path segment"),
    ("/cfg/base.txt", "/cfg/base.txt", "refused: a _BASE_ must be a .yaml/.yml config file"),
    ("/cfg/big.yaml", "/cfg/big.yaml", f"refused: the file has {MAX_CONFIG_BYTES + 1} bytes, more than the limit"),
    ("/cfg/moved.yaml", "/cfg/moved.yaml", "refused: the server redirects to file:///etc/passwd"),
])
def test_an_allowed_remote_base_is_still_checked(isolated, tmp_path, route, url_path, message):  # noqa: F811
    routes = {"/cfg/base.yaml": (200, {}, BASE_YAML.encode()), "/cfg/base.txt": (200, {}, BASE_YAML.encode()),
              "/cfg/big.yaml": (200, {}, b"#" * (MAX_CONFIG_BYTES + 1)),
              "/cfg/moved.yaml": (302, {"Location": "file:///etc/passwd"}, b"")}
    config = tmp_path / "config.yaml"
    with serving(routes) as (base, requests):
        config.write_text(f"_BASE_: {base}{url_path}\n")
        with pytest.raises(ValueError) as e:
            load_config(str(config), allow_remote=True)
    assert str(e.value).startswith(f"config {config}: _BASE_ {base}{url_path}: ") and message in str(e.value)
    assert "root:" not in str(e.value)
    assert not isolated["downloads"].exists() or list(isolated["downloads"].iterdir()) == []


# ----------------------------------------------------------------------------- command lines
def test_the_train_net_flag_allows_remote_configs_for_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(REMOTE_CONFIG_ENV, "0")  # restored after the test
    assert argument_parser().parse_args(["--config-file", "x.yaml", REMOTE_CONFIG_FLAG]).allow_remote_config
    config = _write_hostile(tmp_path, "alias bomb")
    assert cli(["--config-file", str(config), REMOTE_CONFIG_FLAG]) == 1
    assert os.environ[REMOTE_CONFIG_ENV] == "1"  # what the processes launch() starts inherit
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"train_net: error: config {config}: refused: its YAML anchors/aliases expand")


def _home(folder: Path) -> dict:
    """The environment of a command whose home (where caches such as matplotlib's go) is in ``folder``."""
    (folder / "home").mkdir()
    return {"HOME": str(folder / "home"), "MASKFORMER_D2_CACHE": str(folder / "home" / "cache")}


@pytest.mark.slow
def test_train_net_refuses_an_alias_bomb_in_one_line(tmp_path):
    """It used to hang in detectron2's default_setup, which dumps the config."""
    config = _write_hostile(tmp_path, "alias bomb")
    outcome = run_hostile(["train_net.py", "--config-file", config], env=_home(tmp_path))
    assert_refused(outcome, f"train_net: error: config {config}: refused: its YAML anchors/aliases expand")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "home", "secret.txt"]


@pytest.mark.slow
def test_demo_refuses_a_base_outside_yaml_without_quoting_it(tmp_path):
    config = _write_hostile(tmp_path, "base outside yaml")
    image = REPO / "docs" / "demo_shapes_val_all.png"
    outcome = run_hostile(["demo/demo.py", "--config-file", config, "--input", image, "--output", tmp_path / "vis"],
                          env=_home(tmp_path))
    assert_refused(outcome, f"error: config {config}: _BASE_ {tmp_path}/secret.txt: refused: a _BASE_ must be")
    assert SECRET not in outcome.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "vis") == ["config.yaml", "home", "secret.txt"]
    assert not (tmp_path / "vis").exists() or list((tmp_path / "vis").iterdir()) == []  # the output folder
