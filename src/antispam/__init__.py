"""antispam: a high-throughput, embeddable e-mail anti-spam engine.

>>> from antispam import Engine, Envelope
>>> engine = Engine()                     # embedded rules and model, no network
>>> verdict = engine.scan(b"Subject: hello\\n\\nHi Bob", Envelope(client_ip="192.0.2.1"))
>>> verdict.action
'no action'
"""

__version__ = "0.1.0"

from .check import Check, Hit, Question, ScanContext, SymbolDef  # noqa: E402
from .config import Config  # noqa: E402
from .engine import Engine  # noqa: E402
from .errors import AntispamError, ConfigError, ModelError, RuleError  # noqa: E402
from .message import Envelope, Message  # noqa: E402
from .verdict import SymbolResult, Verdict  # noqa: E402

__all__ = [
    "Engine", "Envelope", "Message", "Verdict", "SymbolResult", "Config",
    "Check", "Hit", "Question", "ScanContext", "SymbolDef",
    "AntispamError", "ConfigError", "ModelError", "RuleError", "__version__",
]
