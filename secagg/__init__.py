"""SecAgg+ secure aggregation (Bell et al., CCS 2020, on Bonawitz et al., CCS 2017).

The server (SuperLink and ServerApp) learns only the weighted sum of the sites'
updates. The protocol is a pair of pure, transport-free state machines
(:class:`ClientRound`, :class:`ServerRound`) driven by frozen messages; the
ClientApp mod (:func:`make_secagg_mod`) and the strategy hook (:class:`SecAggPlus`)
run them over the Message API. Imports only the leaf layer of ``appliance``.
``docs/secagg.md`` has the protocol, the parameter formulas and the threat model.

Example (a data scientist's ServerApp, one extra argument)::

    from appliance.strategy import FedAvg
    from secagg import SecAggPlus

    result = FedAvg(min_available_nodes=5).start(
        grid=grid, initial_arrays=arrays, num_rounds=3,
        secure_aggregation=SecAggPlus(clip_range=0.5, dropout_fraction=0.2),
    )

and on the ClientApp side (in a deployment the SuperNode adds this mod itself,
with the node's signing key and the federation CA; locally a keyring stands in)::

    from secagg import UnsafeLocalKeyring, make_secagg_mod

    keyring = UnsafeLocalKeyring()
    app = ClientApp(mods=[make_secagg_mod(keyring.source())])
"""

from secagg.client import ClientRound
from secagg.codec import MESSAGE_TYPES, TrainSpec
from secagg.errors import (
    MalformedMessage,
    ParameterError,
    PolicyRefused,
    ProtocolViolation,
    RoundStateError,
    SecAggError,
    TooManyDropouts,
)
from secagg.graph import neighbour_graph
from secagg.identity import (
    CredentialsSource,
    Ed25519Signer,
    KeyDirectory,
    NodeCredentials,
    Signer,
    UnsafeLocalKeyring,
    restrict_to_secagg,
)
from secagg.messages import (
    AdvertisedKeys,
    ClientMessage,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    MaskedInput,
    MaskedInputRequest,
    ServerMessage,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    Stage,
    UnmaskReply,
    UnmaskRequest,
)
from secagg.mod import IntegerEncoder, is_secagg_mod, make_secagg_mod
from secagg.params import (
    GraphParams,
    RoundConfig,
    RoundParams,
    choose_modulus_bits,
    choose_parameters,
    derive_round_params,
)
from secagg.quantize import Quantizer, SecureMean
from secagg.server import ServerRound
from secagg.workflow import SecAggPlus

__all__ = [
    "MESSAGE_TYPES",
    "AdvertisedKeys",
    "ClientMessage",
    "ClientRound",
    "ConsistencyRequest",
    "ConsistencySignature",
    "CredentialsSource",
    "Ed25519Signer",
    "EncryptedShare",
    "GraphParams",
    "IntegerEncoder",
    "KeyDirectory",
    "MalformedMessage",
    "MaskedInput",
    "MaskedInputRequest",
    "NodeCredentials",
    "ParameterError",
    "PolicyRefused",
    "ProtocolViolation",
    "Quantizer",
    "RoundConfig",
    "RoundParams",
    "RoundStateError",
    "SecAggError",
    "SecAggPlus",
    "SecureMean",
    "ServerMessage",
    "ServerRound",
    "SetupRequest",
    "ShareKeysReply",
    "ShareKeysRequest",
    "Signer",
    "Stage",
    "TooManyDropouts",
    "TrainSpec",
    "UnmaskReply",
    "UnmaskRequest",
    "UnsafeLocalKeyring",
    "choose_modulus_bits",
    "choose_parameters",
    "derive_round_params",
    "is_secagg_mod",
    "make_secagg_mod",
    "neighbour_graph",
    "restrict_to_secagg",
]
