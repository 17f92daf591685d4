"""Every config key maskformer_d2 reads, with its default, and the one reader of config files.

``add_maskformer_config(cfg)`` is all a caller needs: it also adds detectron2's DeepLab keys
(poly LR, ResNet stem type / multi-grid) that the official YAMLs use, so official configs load
unchanged. ``load_config`` reads a config file as untrusted input (sizes, ``_BASE_`` files, YAML
aliases and the official configs' list expressions all within budgets), for the command-line tools.
"""
import ast
import contextlib
import io
import logging
import os
import re
import stat
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union
from urllib.parse import urlsplit

import torch
import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.projects.deeplab import add_deeplab_config

from .errors import first_line
from .remote import download, is_url
from .tasks import TASKS


def add_maskformer_config(cfg: CN) -> None:
    """Add MaskFormer's keys (the official ``add_mask_former_config`` ones plus ours) to ``cfg``.

    Calling it twice is harmless.
    """
    if hasattr(cfg.MODEL, "MASK_FORMER"):
        return
    add_deeplab_config(cfg)  # poly LR, ResNet stem type / multi-grid, SINGLE_CATEGORY_MAX_AREA

    # ---- data
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.COLOR_AUG_SSD = False
    # pad image and label in the mapper (-1: no padding)
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # large-scale jitter (LSJ) mappers for COCO: square crop of IMAGE_SIZE after scaling in [MIN, MAX]
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0
    # what to do with an image that cannot be read: "error" stops with its path, "skip" warns and
    # skips it (counted in the log)
    cfg.INPUT.ON_BAD_IMAGE = "error"

    # ---- solver
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1

    # ---- model
    mf = cfg.MODEL.MASK_FORMER = CN()
    # loss
    mf.DEEP_SUPERVISION = True
    mf.NO_OBJECT_WEIGHT = 0.1
    mf.CLASS_WEIGHT = 1.0  # Mask2Former's key; MaskFormer's official loss uses 1.0
    mf.DICE_WEIGHT = 1.0
    mf.MASK_WEIGHT = 20.0
    # point-sampled mask loss and matching (Mask2Former's keys; see modeling/point_sampling.py):
    # 0 = the dense loss of the official MaskFormer; -1 = the default of the model family
    # (modeling/recipe.py: 0 for MaskFormer, 112 * 112 for Mask2Former, as the official defaults)
    mf.TRAIN_NUM_POINTS = -1
    mf.OVERSAMPLE_RATIO = 3.0
    mf.IMPORTANCE_SAMPLE_RATIO = 0.75
    # transformer
    mf.NHEADS = 8
    mf.DROPOUT = 0.1
    mf.DIM_FEEDFORWARD = 2048
    mf.ENC_LAYERS = 0
    mf.DEC_LAYERS = 6
    mf.PRE_NORM = False
    mf.HIDDEN_DIM = 256
    mf.NUM_OBJECT_QUERIES = 100
    mf.TRANSFORMER_IN_FEATURE = "res5"
    # ours: the transformer predictor, by name in TRANSFORMER_PREDICTOR_REGISTRY
    mf.TRANSFORMER_DECODER_NAME = "TransformerPredictor"
    # inference
    mf.TEST = CN()
    # SEMANTIC_ON, INSTANCE_ON, PANOPTIC_ON, ...: one switch per output task (maskformer_d2.tasks)
    for task in TASKS.values():
        mf.TEST[task.config_flag] = task.enabled_by_default
    mf.TEST.OVERLAP_THRESHOLD = 0.0
    mf.TEST.OBJECT_MASK_THRESHOLD = 0.0
    mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False
    # some backbones (ResNet) report size_divisibility 0; this overrides it
    mf.SIZE_DIVISIBILITY = 32

    # ---- sem-seg head / pixel decoder
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 0
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"
    # Mask2Former's multi-scale deformable-attention pixel decoder (MSDeformAttnPixelDecoder):
    # the backbone features its encoder attends to. N_POINTS / N_HEADS are accepted because the
    # official configs define them, but the official decoder ignores them (it uses
    # MASK_FORMER.NHEADS heads and 4 points per head and level), and so does ours: same outputs
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8

    # ---- Swin backbone
    sw = cfg.MODEL.SWIN = CN()
    sw.PRETRAIN_IMG_SIZE = 224
    sw.PATCH_SIZE = 4
    sw.EMBED_DIM = 96
    sw.DEPTHS = [2, 2, 6, 2]
    sw.NUM_HEADS = [3, 6, 12, 24]
    sw.WINDOW_SIZE = 7
    sw.MLP_RATIO = 4.0
    sw.QKV_BIAS = True
    sw.QK_SCALE = None
    sw.DROP_RATE = 0.0
    sw.ATTN_DROP_RATE = 0.0
    sw.DROP_PATH_RATE = 0.3
    sw.APE = False
    sw.PATCH_NORM = True
    sw.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    sw.USE_CHECKPOINT = False

    # ---- our extras
    # the built-in synthetic dataset (maskformer_d2.data.datasets.shapes)
    cfg.DATASETS.SHAPES = CN()
    cfg.DATASETS.SHAPES.ROOT = ""  # "" -> $MASKFORMER_D2_CACHE or ~/.cache/maskformer_d2/shapes
    cfg.DATASETS.SHAPES.NUM_TRAIN = 2000
    cfg.DATASETS.SHAPES.NUM_VAL = 200
    cfg.DATASETS.SHAPES.IMAGE_SIZE = 128

    # ---- added by the sem-seg head owner (transformer_decoder/transformer_predictor.py)
    # the official key (default False): give the transformer predictor a 1x1 conv input
    # projection even when the input already has HIDDEN_DIM channels
    mf.ENFORCE_INPUT_PROJ = False


def resolve_device(cfg: CN) -> CN:
    """``cfg`` itself, or a copy on the CPU when ``MODEL.DEVICE`` asks for CUDA and there is none.

    The one place where that fallback is decided (train_net.py and the predictor both use it);
    it logs one warning.
    """
    if not cfg.MODEL.DEVICE.startswith("cuda") or torch.cuda.is_available():
        return cfg
    logging.getLogger(__name__).warning(
        "MODEL.DEVICE is %s but CUDA is not available: running on the CPU", cfg.MODEL.DEVICE)
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    if frozen:
        cfg.freeze()
    return cfg


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
      is fetched by :func:`maskformer_d2.remote.download` into the download cache;
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


# ----------------------------------------------------------------------------- list expressions
_EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"
#: budgets of one expression (the official ones: 80 characters, depth 8, 32 steps, 12-bit numbers)
MAX_EXPRESSION_CHARS = 2_000
MAX_EXPRESSION_DEPTH = 32
#: loop iterations plus list elements produced, by all the expressions of one config together
MAX_EXPRESSION_STEPS = 100_000
MAX_INTEGER_BITS = 64
MAX_ROUND_DIGITS = 30
_FUNCTIONS = ("int", "float", "round", "range")
_OPERATORS: Dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
}
Number = Union[int, float]


def _depth(tree: ast.AST) -> int:
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


class _Evaluator:
    """Walks the AST of a list expression and computes its value, within the budgets above.

    Only numbers, + - * / // % and unary -/+, ``int``/``float``/``round``/``range``, lists, tuples
    and ``[... for NAME in ...]`` comprehensions (several ``for``, no ``if``) exist here; every
    other node is refused, so nothing outside this class can run.
    """

    def __init__(self) -> None:
        self.steps = 0

    def _step(self, n: int = 1) -> None:
        self.steps += n
        if self.steps > MAX_EXPRESSION_STEPS:
            raise ValueError(f"more than {MAX_EXPRESSION_STEPS} steps (loop iterations and list "
                             "elements, all the expressions of the config together)")

    def value(self, node: ast.AST, names: Dict[str, Any]) -> Any:
        if isinstance(node, ast.Constant):
            if type(node.value) not in (int, float):
                raise ValueError(f"constant {node.value!r:.40} is not a number")
            return self._number(node.value)
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise ValueError(f"name {node.id!r} is not allowed")
            return names[node.id]
        if isinstance(node, (ast.List, ast.Tuple)):
            self._step(len(node.elts))
            values = [self.value(e, names) for e in node.elts]
            return values if isinstance(node, ast.List) else tuple(values)
        if isinstance(node, ast.ListComp):
            out: List[Any] = []
            self._comprehension(node, 0, dict(names), out)
            return out
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = self._numeric(node.left, names), self._numeric(node.right, names)
            try:
                return self._number(_OPERATORS[type(node.op)](left, right))
            except (ArithmeticError, ValueError) as e:
                raise ValueError(f"{type(e).__name__}: {e}") from None
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self._numeric(node.operand, names)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.Call):
            return self._call(node, names)
        if isinstance(node, (ast.BinOp, ast.UnaryOp)):
            raise ValueError(f"the operator {type(node.op).__name__} is not allowed")
        raise ValueError(f"{type(node).__name__} is not allowed")

    def _numeric(self, node: ast.AST, names: Dict[str, Any]) -> Number:
        value = self.value(node, names)
        if type(value) not in (int, float):
            what = "lists" if isinstance(value, (list, tuple)) else type(value).__name__
            raise ValueError(f"arithmetic on {what} is not allowed")
        return value

    @staticmethod
    def _number(value: Number) -> Number:
        if isinstance(value, int) and value.bit_length() > MAX_INTEGER_BITS:
            raise ValueError(f"an integer of more than {MAX_INTEGER_BITS} bits")
        return value

    def _call(self, node: ast.Call, names: Dict[str, Any]) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
            raise ValueError("only int(), float(), round() and range() may be called")
        name = node.func.id
        if name == "range":
            r = self._range(node, names)
            self._step(len(r))
            return list(r)
        args = [self._numeric(a, names) for a in node.args]
        if name in ("int", "float") and len(args) != 1 or name == "round" and len(args) not in (1, 2):
            raise ValueError(f"{name}() takes {'one or two numbers' if name == 'round' else 'one number'}")
        if name == "round" and len(args) == 2 and (type(args[1]) is not int or abs(args[1]) > MAX_ROUND_DIGITS):
            raise ValueError(f"round()'s digits must be an integer in [-{MAX_ROUND_DIGITS}, {MAX_ROUND_DIGITS}]")
        function = {"int": int, "float": float, "round": round}[name]
        try:
            return self._number(function(*args))
        except (ArithmeticError, ValueError) as e:
            raise ValueError(f"{name}(): {e}") from None

    def _range(self, node: ast.Call, names: Dict[str, Any]) -> range:
        args = [self._numeric(a, names) for a in node.args]
        if not 1 <= len(args) <= 3 or any(type(a) is not int for a in args):
            raise ValueError("range() takes one to three integers")
        try:
            r = range(*args)
        except ValueError as e:  # a step of 0
            raise ValueError(f"range(): {e}") from None
        if len(r) > MAX_EXPRESSION_STEPS:  # would exceed the budget anyway: say so at once
            raise ValueError(f"range of {len(r)} numbers (at most {MAX_EXPRESSION_STEPS})")
        return r

    def _iterable(self, node: ast.AST, names: Dict[str, Any]) -> Iterable[Any]:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
                and not node.keywords:
            return self._range(node, names)  # iterated lazily: each iteration is a step
        value = self.value(node, names)
        if not isinstance(value, (list, tuple)):
            raise ValueError("a comprehension may only iterate over a list or range()")
        return value

    def _comprehension(self, node: ast.ListComp, level: int, names: Dict[str, Any], out: List[Any]) -> None:
        if level == len(node.generators):
            self._step()
            out.append(self.value(node.elt, names))
            return
        generator = node.generators[level]
        if not isinstance(generator.target, ast.Name) or generator.ifs or generator.is_async:
            raise ValueError("only 'for NAME in ...' comprehensions are allowed")
        if generator.target.id in _FUNCTIONS:
            raise ValueError(f"{generator.target.id!r} may not be a loop variable")
        for item in self._iterable(generator.iter, names):
            self._step()
            names[generator.target.id] = item
            self._comprehension(node, level + 1, names, out)


def evaluate_list_expression(text: str, evaluator: Optional[_Evaluator] = None) -> Any:
    """The value of a config expression such as ``[int(x * 0.1 * 512) for x in range(5, 21)]``.

    Only numbers, + - * / // %, ``int``/``float``/``round``/``range``, lists, tuples and plain list
    comprehensions are accepted, evaluated by walking the syntax tree (no ``eval``), within budgets:
    at most 2000 characters, 32 levels of nesting, 100000 steps (loop iterations plus list
    elements, all lists together), 64-bit integers, ``round`` to at most 30 digits. Anything else
    (attributes, other names or calls, strings, powers) or over budget raises one-line ``ValueError``.

    Args:
        evaluator: pass the same one for every expression of a config to share the step budget.
    """
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, MemoryError, RecursionError) as e:
        raise ValueError(f"not an expression ({getattr(e, 'msg', type(e).__name__)})") from None
    if _depth(tree) > MAX_EXPRESSION_DEPTH:
        raise ValueError(f"nested more than {MAX_EXPRESSION_DEPTH} levels deep")
    return (evaluator or _Evaluator()).value(tree.body, {})


def _list_expression_constructor(evaluator: _Evaluator) -> Callable[[yaml.SafeLoader, yaml.Node], Any]:
    """The YAML constructor of the eval tag: :func:`evaluate_list_expression` with ``evaluator``."""

    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        mark = node.start_mark
        where = f"{mark.name}, line {mark.line + 1}" if mark.name else f"line {mark.line + 1}"
        if not isinstance(node, yaml.SequenceNode) or len(node.value) != 1 \
                or not isinstance(node.value[0], yaml.ScalarNode):
            raise ValueError(f"refused: python/object/apply:eval ({where}) takes one string")
        text = node.value[0].value
        try:
            return evaluate_list_expression(text, evaluator)
        except ValueError as e:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise ValueError(f"refused: the expression {shown!r} ({where}): {e}") from None

    return construct


@contextlib.contextmanager
def _list_expressions_allowed() -> Iterator[None]:
    """Within it, ``yaml.safe_load`` (which detectron2's config reader uses) accepts the official
    configs' list expressions through :func:`evaluate_list_expression`, all within one budget."""
    yaml.SafeLoader.add_constructor(_EVAL_TAG, _list_expression_constructor(_Evaluator()))
    try:
        yield
    finally:
        del yaml.SafeLoader.yaml_constructors[_EVAL_TAG]
