from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HelloRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class HelloResponse(_message.Message):
    __slots__ = ("node_id", "node_name", "keepalive_s", "audit_vkey")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_S_FIELD_NUMBER: _ClassVar[int]
    AUDIT_VKEY_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    node_name: str
    keepalive_s: float
    audit_vkey: str
    def __init__(self, node_id: _Optional[int] = ..., node_name: _Optional[str] = ..., keepalive_s: _Optional[float] = ..., audit_vkey: _Optional[str] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FleetEvent(_message.Message):
    __slots__ = ("message", "run_ended", "keepalive", "delivery")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RUN_ENDED_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    message: MessageAvailable
    run_ended: RunEnded
    keepalive: Keepalive
    delivery: MessageDelivery
    def __init__(self, message: _Optional[_Union[MessageAvailable, _Mapping]] = ..., run_ended: _Optional[_Union[RunEnded, _Mapping]] = ..., keepalive: _Optional[_Union[Keepalive, _Mapping]] = ..., delivery: _Optional[_Union[MessageDelivery, _Mapping]] = ...) -> None: ...

class MessageAvailable(_message.Message):
    __slots__ = ("message_id", "run_id")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    run_id: int
    def __init__(self, message_id: _Optional[str] = ..., run_id: _Optional[int] = ...) -> None: ...

class MessageDelivery(_message.Message):
    __slots__ = ("head", "content")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    head: MessageHead
    content: bytes
    def __init__(self, head: _Optional[_Union[MessageHead, _Mapping]] = ..., content: _Optional[bytes] = ...) -> None: ...

class RunEnded(_message.Message):
    __slots__ = ("run_id", "status")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    status: str
    def __init__(self, run_id: _Optional[int] = ..., status: _Optional[str] = ...) -> None: ...

class Keepalive(_message.Message):
    __slots__ = ("server_time",)
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    server_time: float
    def __init__(self, server_time: _Optional[float] = ...) -> None: ...

class PullMessageRequest(_message.Message):
    __slots__ = ("message_id", "witness_size")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    WITNESS_SIZE_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    witness_size: int
    def __init__(self, message_id: _Optional[str] = ..., witness_size: _Optional[int] = ...) -> None: ...

class RunContext(_message.Message):
    __slots__ = ("run_id", "bundle_sha256", "run_config_json", "bundle_signature")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    bundle_sha256: str
    run_config_json: str
    bundle_signature: bytes
    def __init__(self, run_id: _Optional[int] = ..., bundle_sha256: _Optional[str] = ..., run_config_json: _Optional[str] = ..., bundle_signature: _Optional[bytes] = ...) -> None: ...

class MessageHead(_message.Message):
    __slots__ = ("metadata", "content_size", "run", "audit_checkpoint", "audit_consistency", "audit_proof_from")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    AUDIT_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    AUDIT_CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    AUDIT_PROOF_FROM_FIELD_NUMBER: _ClassVar[int]
    metadata: bytes
    content_size: int
    run: RunContext
    audit_checkpoint: str
    audit_consistency: _containers.RepeatedScalarFieldContainer[bytes]
    audit_proof_from: int
    def __init__(self, metadata: _Optional[bytes] = ..., content_size: _Optional[int] = ..., run: _Optional[_Union[RunContext, _Mapping]] = ..., audit_checkpoint: _Optional[str] = ..., audit_consistency: _Optional[_Iterable[bytes]] = ..., audit_proof_from: _Optional[int] = ...) -> None: ...

class MessageChunk(_message.Message):
    __slots__ = ("head", "data")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    head: MessageHead
    data: bytes
    def __init__(self, head: _Optional[_Union[MessageHead, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ReplyHead(_message.Message):
    __slots__ = ("metadata", "is_error", "error_code", "error_reason", "content_size", "signature")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    IS_ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    metadata: bytes
    is_error: bool
    error_code: int
    error_reason: str
    content_size: int
    signature: bytes
    def __init__(self, metadata: _Optional[bytes] = ..., is_error: _Optional[bool] = ..., error_code: _Optional[int] = ..., error_reason: _Optional[str] = ..., content_size: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ReplyChunk(_message.Message):
    __slots__ = ("head", "data")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    head: ReplyHead
    data: bytes
    def __init__(self, head: _Optional[_Union[ReplyHead, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class WholeReply(_message.Message):
    __slots__ = ("head", "content")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    head: ReplyHead
    content: bytes
    def __init__(self, head: _Optional[_Union[ReplyHead, _Mapping]] = ..., content: _Optional[bytes] = ...) -> None: ...

class PushReplyResponse(_message.Message):
    __slots__ = ("message_id",)
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    def __init__(self, message_id: _Optional[str] = ...) -> None: ...

class GetBundleRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    def __init__(self, run_id: _Optional[int] = ...) -> None: ...

class BundleHead(_message.Message):
    __slots__ = ("sha256", "size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class BundleChunk(_message.Message):
    __slots__ = ("head", "data")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    head: BundleHead
    data: bytes
    def __init__(self, head: _Optional[_Union[BundleHead, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class CosignRequest(_message.Message):
    __slots__ = ("tree_size", "signature_line", "witness_vkey")
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_LINE_FIELD_NUMBER: _ClassVar[int]
    WITNESS_VKEY_FIELD_NUMBER: _ClassVar[int]
    tree_size: int
    signature_line: str
    witness_vkey: str
    def __init__(self, tree_size: _Optional[int] = ..., signature_line: _Optional[str] = ..., witness_vkey: _Optional[str] = ...) -> None: ...

class CosignResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReceiptRequest(_message.Message):
    __slots__ = ("receipt", "signature")
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    receipt: bytes
    signature: bytes
    def __init__(self, receipt: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ReceiptResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
