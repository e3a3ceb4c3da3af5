"""Parameters: defaults, validation, the resolved configuration, and parameters files.

Every parameter has one flat name (the names a papermill ``parameters`` cell uses), a default, a
type and a one-line help text. Everything is validated before anything runs: unknown names, wrong
types, empty lists and impossible values raise :class:`ConfigError` with one sentence naming the key.

    fields.py       ConfigError; one parameter's default, help text, checking and coercion
    classify.py     Config = DataConfig + ModelConfig + TrainConfig: the classifier (train.ipynb)
    discover.py     DiscoveryConfig: the object-discovery autoencoder (object_discovery.ipynb)
    params_file.py  base / grid / seeds / notebook -> cells with ids; --set; a notebook's namespace

The names below are the package's interface; import them from ``slotlib.config``.
"""

from .classify import (
                       DEFAULTS,
                       FIELDS,
                       HEADS,
                       HELP,
                       LOCAL_ONLY,
                       MIN_TOKENS,
                       OUTPUT_STRIDES,
                       PIPELINES,
                       PRECISIONS,
                       SECTIONS,
                       SLOTVIT_PREFIX,
                       TOKEN_NORMS,
                       TTAS,
                       Config,
                       DataConfig,
                       ModelConfig,
                       TrainConfig,
)
from .discover import DISCOVERY_BACKGROUNDS, DISCOVERY_LOCAL_ONLY, DISCOVERY_SIZES, DiscoveryConfig
from .fields import ConfigError
from .params_file import (
                       ALIASES,
                       DEFAULT_NOTEBOOK,
                       NOTEBOOK_CONFIGS,
                       NOTEBOOK_EXTRAS,
                       TOP_KEYS,
                       Cell,
                       ParamsFile,
                       cell_id,
                       config_names,
                       from_namespace,
                       grid_products,
                       load_params_file,
                       parse_params,
                       parse_set,
)

__all__ = ["ALIASES", "DEFAULTS", "DEFAULT_NOTEBOOK", "DISCOVERY_BACKGROUNDS", "DISCOVERY_LOCAL_ONLY",
           "DISCOVERY_SIZES", "FIELDS", "HEADS", "HELP", "LOCAL_ONLY", "MIN_TOKENS", "NOTEBOOK_CONFIGS",
           "NOTEBOOK_EXTRAS", "OUTPUT_STRIDES", "PIPELINES", "PRECISIONS", "SECTIONS",
           "SLOTVIT_PREFIX", "TOKEN_NORMS", "TOP_KEYS", "TTAS", "Cell", "Config", "ConfigError",
           "DataConfig", "DiscoveryConfig", "ModelConfig", "ParamsFile", "TrainConfig", "cell_id", "config_names",
           "from_namespace", "grid_products", "load_params_file", "parse_params", "parse_set"]
