"""A faithful local stand-in for an Adobe Campaign v8 tenant.

It speaks Campaign's SOAP protocol (``POST /nl/jsp/soaprouter.jsp``) with the
response shapes Adobe's SDK parses, authenticates with Logon sessions or IMS
bearer tokens from its own ``/ims/token/v3``, stores Write/WriteCollection/Ingest/
IngestExt records with real validation, and plays the tenant's limits and weather:
a TPS limit (three limiter models), latency, a concurrency cap, injected failures
and outage windows, all changeable at run time through ``POST /__sim/control``.

Start it with ``campaign-writer simulate`` or in process::

    simulator = Simulator(SimulatorConfig(port=0, tps_limit=100))
    await simulator.start()       # simulator.url == "http://127.0.0.1:<port>"
    ...
    await simulator.close()

Modules: :mod:`.config` (every knob; :mod:`.configtables` reads its tables),
:mod:`.app` (HTTP), :mod:`.tenant` (methods), :mod:`.protocol` (wire format),
:mod:`.staging` (write semantics), :mod:`.tables` (storage), :mod:`.schemas` and
:mod:`.xtktypes` (validation), :mod:`.auth`, :mod:`.limits`, :mod:`.faults`
(injected weather), :mod:`.refusals` (the wording of faults per profile),
:mod:`.codes`, :mod:`.calllog`, :mod:`.control` (the ``/__sim`` contract: control
fields, stats, records, call log).
"""

from __future__ import annotations

from .app import Simulator
from .config import (
    DEFAULT_IMS_CLIENTS,
    DEFAULT_USERS,
    ImsClient,
    SimulatorConfig,
    User,
    load_config,
)
from .faults import FaultWindow
from .schemas import DEFAULT_SCHEMAS, AttributeSpec, SchemaSpec

__all__ = [
    "DEFAULT_IMS_CLIENTS",
    "DEFAULT_SCHEMAS",
    "DEFAULT_USERS",
    "AttributeSpec",
    "FaultWindow",
    "ImsClient",
    "SchemaSpec",
    "Simulator",
    "SimulatorConfig",
    "User",
    "load_config",
]
