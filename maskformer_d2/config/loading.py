"""The one reader of config files: ``load_config`` reads a config file as untrusted input (sizes,
``_BASE_`` files, YAML aliases and the official configs' list expressions all within budgets),
for the command-line tools.
"""
import contextlib
import io
import os
import re
import stat
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple
from urllib.parse import urlsplit

import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from ..checkpoint.remote import download, is_url
from ..errors import first_line
from .defaults import add_maskformer_config
from .expressions import _EVAL_TAG, _list_expressions_allowed

# ----------------------------------------------------------------------------- reading configs
REMOTE_CONFIG_ENV = "MASKFORMER_D2_ALLOW_REMOTE_CONFIG"
REMOTE_CONFIG_FLAG = "--allow-remote-config"
#: the largest config file read (official ones are a few KB)
MAX_CONFIG_BYTES = 1024 * 1024
#: the most files one config may pull in through ``_BASE_`` (official ones: 3), which also ends
#: a ``_BASE_`` cycle
MAX_CONFIG_FILES = 32
_YAML_SUFFIXES = (".yaml", ".yml")
_KEY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BASE_KEY = "_BASE_"


def remote_config_allowed() -> bool:
    """Whether a ``_BASE_`` may be an http(s) URL (``MASKFORMER_D2_ALLOW_REMOTE_CONFIG=1``)."""
    return os.environ.get(REMOTE_CONFIG_ENV, "") == "1"


def allow_remote_config() -> None:
    """Allow remote ``_BASE_`` configs in this process and those it starts (what the CLI flag does)."""
    os.environ[REMOTE_CONFIG_ENV] = "1"


def load_config(config_file: str, opts: Sequence[str] = (), opts_name: str = "overrides", *,
                allow_remote: Optional[bool] = None) -> CN:
    """The config of a command: detectron2's defaults + MaskFormer's keys + ``config_file`` +
    ``opts`` (KEY VALUE pairs). The one config reader of the command-line tools.

    A config file is untrusted input; every failure below is one ``ValueError`` line naming it:

    * each file (``config_file`` and every ``_BASE_``) is a regular file of at most 1 MiB, read once;
      a ``_BASE_`` must be a ``.yaml``/``.yml`` file, and messages never quote a file's content;
    * a ``_BASE_`` URL is refused unless remote configs are allowed (``allow_remote``, by default
      ``MASKFORMER_D2_ALLOW_REMOTE_CONFIG=1``, which ``--allow-remote-config`` sets); an allowed one
      is fetched by :func:`maskformer_d2.checkpoint.remote.download` into the download cache;
    * YAML anchors/aliases may not expand the document beyond its own size (an "alias bomb"
      would otherwise hang whatever walks or dumps the config), nor refer to themselves, and keys
      are names such as ``MODEL`` (so that yacs' "unknown key" never quotes a file that is no config);
    * YAML is read safely: Python tags (``!!python/...``, which yacs would otherwise execute) are
      refused. The one exception is what the official configs use for multi-scale sizes,
      ``!!python/object/apply:eval ["[int(x * 0.1 * 512) for x in range(5, 21)]"]``: such an
      expression is evaluated by :func:`evaluate_list_expression`, within budgets;
    * every value must be one YAML can write back (``cfg.dump()``): numbers, strings, booleans,
      null, and lists of those.

    Args:
        opts_name: how the overrides are called in messages (e.g. "--opts").
        allow_remote: whether a ``_BASE_`` may be a URL; ``None``: :func:`remote_config_allowed`.
    """
    cfg = get_cfg()
    add_maskformer_config(cfg)
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config {config_file}: no such file")
    allow_remote = remote_config_allowed() if allow_remote is None else allow_remote
    try:
        with _list_expressions_allowed(), _config_files_vetted(type(cfg), allow_remote):
            cfg.merge_from_file(config_file, allow_unsafe=False)
        _check_writable(cfg)
    except yaml.constructor.ConstructorError as e:
        raise ValueError(f"config {config_file}: refused: it is not plain YAML ({_yaml_problem(e)}); "
                         "a config may not construct Python objects") from None
    except RecursionError:
        raise ValueError(f"config {config_file}: nested too deeply") from None
    except Exception as e:  # yacs: unknown key (KeyError), bad value (AssertionError/ValueError), ours
        raise ValueError(f"config {config_file}: {first_line(e) or type(e).__name__}") from None
    try:
        cfg.merge_from_list(list(opts))
        _check_writable(cfg)
    except Exception as e:
        raise ValueError(f"{opts_name}: {first_line(e) or type(e).__name__}") from None
    return cfg


class _ConfigFiles:
    """What detectron2's ``CfgNode._open_cfg`` (the one place it opens a config file, the top one
    and each ``_BASE_``) does within :func:`load_config`: vet, then hand over the vetted text."""

    def __init__(self, allow_remote: bool):
        self.allow_remote = allow_remote
        self.opened = 0

    def __call__(self, filename: str) -> io.StringIO:
        self.opened += 1
        is_base = self.opened > 1  # detectron2 opens the top file first, then its bases
        prefix = f"{_BASE_KEY} {filename}: " if is_base else ""  # load_config names the top file
        if self.opened > MAX_CONFIG_FILES:
            raise ValueError(f"{prefix}more than {MAX_CONFIG_FILES} config files through "
                             f"{_BASE_KEY} (a cycle?)")
        path = filename
        if is_url(filename):
            if not self.allow_remote:
                raise ValueError(
                    f"{prefix}refused: remote configs are off; pass {REMOTE_CONFIG_FLAG} (or set "
                    f"{REMOTE_CONFIG_ENV}=1) if you trust where it comes from")
            if not urlsplit(filename).path.lower().endswith(_YAML_SUFFIXES):  # before fetching it
                raise ValueError(f"{prefix}refused: a {_BASE_KEY} must be a .yaml/.yml config file")
            path = download(filename, what=_BASE_KEY, max_bytes=MAX_CONFIG_BYTES)
        text = _read_config_text(path, prefix, yaml_only=is_base)
        _check_yaml_document(text, prefix)
        stream = io.StringIO(text)
        stream.name = prefix[:-2]  # where PyYAML (and our expression errors) say it is
        return stream


@contextlib.contextmanager
def _config_files_vetted(cfg_class: type, allow_remote: bool) -> Iterator[None]:
    """Within it, ``cfg_class`` (detectron2's ``CfgNode``) opens config files through
    :class:`_ConfigFiles`."""
    reader = _ConfigFiles(allow_remote)
    original = cfg_class.__dict__.get("_open_cfg")
    cfg_class._open_cfg = classmethod(lambda cls, filename: reader(filename))
    try:
        yield
    finally:
        if original is None:
            del cfg_class._open_cfg
        else:
            cfg_class._open_cfg = original


def _read_config_text(path: str, prefix: str, yaml_only: bool) -> str:
    """The text of a config file, after checking what it is and how large it is."""
    if yaml_only and not all(p.lower().endswith(_YAML_SUFFIXES) for p in (path, os.path.realpath(path))):
        raise ValueError(f"{prefix}refused: a {_BASE_KEY} must be a .yaml/.yml config file")
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{prefix}refused: not a regular file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"{prefix}refused: {st.st_size} bytes, more than a config's "
                             f"limit of {MAX_CONFIG_BYTES}")
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ValueError(f"{prefix}no such file") from None
    except OSError as e:
        raise ValueError(f"{prefix}cannot be read ({e.strerror or type(e).__name__})") from None
    if len(data) > MAX_CONFIG_BYTES:  # grew since stat
        raise ValueError(f"{prefix}refused: more than a config's limit of {MAX_CONFIG_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{prefix}not UTF-8 text (byte {e.start}); is it a YAML config?") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """What is wrong in a YAML file and where, without the excerpt of the file PyYAML adds."""
    if not isinstance(e, yaml.MarkedYAMLError):
        return first_line(e) or type(e).__name__
    mark = e.problem_mark or e.context_mark
    what = (e.problem or e.context or type(e).__name__)[:120]
    if mark is None:
        return what
    where = f"{mark.name}, " if mark.name and not mark.name.startswith("<") else ""
    return f"{what} at {where}line {mark.line + 1}, column {mark.column + 1}"


def _children(node: yaml.Node) -> List[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expanded_size(root: yaml.Node, limit: int) -> Tuple[int, int, int]:
    """``(nodes, expressions, distinct expressions)`` of a document once every alias is replaced by
    a copy of its anchor (expressions: ``python/object/apply:eval`` nodes).

    Raises ``ValueError`` past ``limit`` nodes, or for an alias inside its own anchor. Iterative,
    and each distinct node is sized once, so this costs the size of the file, not of the expansion.
    """
    sizes: Dict[int, Tuple[int, int]] = {}
    open_nodes: Set[int] = set()  # ancestors of the node being sized
    distinct_expressions = 0
    stack: List[Tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            open_nodes.discard(id(node))
            is_expression = node.tag == _EVAL_TAG
            distinct_expressions += is_expression
            children = [sizes[id(c)] for c in _children(node)]
            sizes[id(node)] = (1 + sum(n for n, _ in children), is_expression + sum(e for _, e in children))
            if sizes[id(node)][0] > limit:
                raise ValueError(f"its YAML anchors/aliases expand to more than {limit} values "
                                 "(an alias bomb?); write the values out")
            continue
        if id(node) in sizes:
            continue
        open_nodes.add(id(node))
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                raise ValueError("a YAML alias refers to the anchor it is inside of")
            if id(child) not in sizes:
                stack.append((child, False))
    return (*sizes[id(root)], distinct_expressions)


def _check_yaml_document(text: str, prefix: str) -> None:
    """Refuse a config text that is not one YAML mapping, whose aliases expand it beyond its own
    size (plus a little), or whose ``_BASE_`` is not a file name or a list of them. Only parses
    (composes): constructs nothing."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as e:
        raise ValueError(f"{prefix}not valid YAML ({_yaml_problem(e)})") from None
    except RecursionError:
        raise ValueError(f"{prefix}YAML nested too deeply") from None
    finally:
        loader.dispose()
    if not isinstance(root, yaml.MappingNode):
        found = "an empty file" if root is None else f"a YAML {root.id}"
        raise ValueError(f"{prefix}not a config: a config is a YAML mapping of keys, this is {found}")
    try:  # aliases may not multiply the file's size
        _, expressions, distinct = _expanded_size(root, limit=10_000 + len(text))
    except ValueError as e:
        raise ValueError(f"{prefix}refused: {e}") from None
    if expressions > distinct:  # its value could be large: repeated, it would escape the budgets
        raise ValueError(f"{prefix}refused: a YAML alias repeats a python/object/apply:eval "
                         "expression; write the expression out again")
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == _BASE_KEY:
            names = value.value if isinstance(value, yaml.SequenceNode) else [value]
            if not all(isinstance(n, yaml.ScalarNode) and n.tag.endswith(":str") for n in names):
                raise ValueError(f"{prefix}{_BASE_KEY} (line {value.start_mark.line + 1}) must be a "
                                 "file name or a list of file names")
    _check_key_names(root, prefix)


def _check_key_names(root: yaml.MappingNode, prefix: str) -> None:
    """Refuse a key of the config tree (mappings within mappings) that is not a name such as
    ``MODEL`` or ``NUM_CLASSES``: yacs would quote it as an unknown key, and a file that is not a
    config (``/etc/shadow``) would then be quoted in the message."""
    mappings = [root]
    while mappings:
        for key, value in mappings.pop().value:
            if key.tag == "tag:yaml.org,2002:merge":  # "<<: *defaults" merges a mapping in
                continue
            if not (isinstance(key, yaml.ScalarNode) and _KEY_NAME.fullmatch(key.value)):
                raise ValueError(f"{prefix}line {key.start_mark.line + 1}: not a config: a key there is "
                                 "not a name like MODEL or NUM_CLASSES")
            if isinstance(value, yaml.MappingNode):
                mappings.append(value)


_WRITABLE_LEAVES = (str, int, float, bool, type(None))


def _unwritable(value: Any) -> Optional[str]:
    """The type name of the first part of a config value ``cfg.dump()`` could not write, or None."""
    if isinstance(value, _WRITABLE_LEAVES):
        return None
    if isinstance(value, (list, tuple)):
        return next((found for found in map(_unwritable, value) if found is not None), None)
    if isinstance(value, dict):
        return next((found for k, v in value.items() for found in (_unwritable(k), _unwritable(v))
                     if found is not None), None)
    return type(value).__name__


def _check_writable(cfg: CN, prefix: str = "") -> None:
    """Raise ``ValueError`` naming the first key whose value is not plain YAML data (which would
    make ``cfg.dump()``, e.g. in detectron2's ``default_setup``, fail with a traceback)."""
    for key, value in cfg.items():
        if isinstance(value, CN):
            _check_writable(value, f"{prefix}{key}.")
            continue
        found = _unwritable(value)
        if found is not None:
            raise ValueError(f"{prefix}{key}: a config value may hold numbers, strings, booleans, "
                             f"null and lists of those, not a {found}")
