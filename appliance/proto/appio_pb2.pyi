from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArtifactChunk(_message.Message):
    __slots__ = ("name", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutArtifactResponse(_message.Message):
    __slots__ = ("sha256", "size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("run_id", "run_config_json", "bundle_sha256")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    run_config_json: str
    bundle_sha256: str
    def __init__(self, run_id: _Optional[int] = ..., run_config_json: _Optional[str] = ..., bundle_sha256: _Optional[str] = ...) -> None: ...

class GetNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetNodesResponse(_message.Message):
    __slots__ = ("node_ids",)
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    node_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, node_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ContentChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class PushContentResponse(_message.Message):
    __slots__ = ("content_ref", "size")
    CONTENT_REF_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    content_ref: str
    size: int
    def __init__(self, content_ref: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class OutgoingMessage(_message.Message):
    __slots__ = ("metadata", "content_ref", "content")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_REF_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    metadata: bytes
    content_ref: str
    content: bytes
    def __init__(self, metadata: _Optional[bytes] = ..., content_ref: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class PushMessagesRequest(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[OutgoingMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[OutgoingMessage, _Mapping]]] = ...) -> None: ...

class PushMessagesResponse(_message.Message):
    __slots__ = ("message_ids",)
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ReceiveRequest(_message.Message):
    __slots__ = ("message_ids", "timeout_s", "bodies_by_fd")
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    BODIES_BY_FD_FIELD_NUMBER: _ClassVar[int]
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    timeout_s: float
    bodies_by_fd: bool
    def __init__(self, message_ids: _Optional[_Iterable[str]] = ..., timeout_s: _Optional[float] = ..., bodies_by_fd: _Optional[bool] = ...) -> None: ...

class ReplyHead(_message.Message):
    __slots__ = ("metadata", "is_error", "error_code", "error_reason", "content_size", "body_ticket")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    IS_ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    BODY_TICKET_FIELD_NUMBER: _ClassVar[int]
    metadata: bytes
    is_error: bool
    error_code: int
    error_reason: str
    content_size: int
    body_ticket: int
    def __init__(self, metadata: _Optional[bytes] = ..., is_error: _Optional[bool] = ..., error_code: _Optional[int] = ..., error_reason: _Optional[str] = ..., content_size: _Optional[int] = ..., body_ticket: _Optional[int] = ...) -> None: ...

class ReceivedChunk(_message.Message):
    __slots__ = ("head", "data")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    head: ReplyHead
    data: bytes
    def __init__(self, head: _Optional[_Union[ReplyHead, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class FinishRequest(_message.Message):
    __slots__ = ("failed", "reason")
    FAILED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    failed: bool
    reason: str
    def __init__(self, failed: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class FinishResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
