from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListArtifactsRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    def __init__(self, run_id: _Optional[int] = ...) -> None: ...

class ArtifactInfo(_message.Message):
    __slots__ = ("name", "sha256", "size", "created_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    size: int
    created_at: float
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., created_at: _Optional[float] = ...) -> None: ...

class ListArtifactsResponse(_message.Message):
    __slots__ = ("artifacts",)
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    artifacts: _containers.RepeatedCompositeFieldContainer[ArtifactInfo]
    def __init__(self, artifacts: _Optional[_Iterable[_Union[ArtifactInfo, _Mapping]]] = ...) -> None: ...

class GetArtifactRequest(_message.Message):
    __slots__ = ("run_id", "name")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    name: str
    def __init__(self, run_id: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class ArtifactData(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class SubmitRunHead(_message.Message):
    __slots__ = ("bundle_sha256", "bundle_size", "run_config_json", "app_name", "app_version", "bundle_signature")
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    APP_NAME_FIELD_NUMBER: _ClassVar[int]
    APP_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    bundle_sha256: str
    bundle_size: int
    run_config_json: str
    app_name: str
    app_version: str
    bundle_signature: bytes
    def __init__(self, bundle_sha256: _Optional[str] = ..., bundle_size: _Optional[int] = ..., run_config_json: _Optional[str] = ..., app_name: _Optional[str] = ..., app_version: _Optional[str] = ..., bundle_signature: _Optional[bytes] = ...) -> None: ...

class SubmitRunChunk(_message.Message):
    __slots__ = ("head", "data")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    head: SubmitRunHead
    data: bytes
    def __init__(self, head: _Optional[_Union[SubmitRunHead, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SubmitRunResponse(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    def __init__(self, run_id: _Optional[int] = ...) -> None: ...

class RunInfo(_message.Message):
    __slots__ = ("run_id", "owner", "status", "reason", "bundle_sha256", "created_at", "started_at", "finished_at", "run_config_json", "receipts", "privacy")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    owner: str
    status: str
    reason: str
    bundle_sha256: str
    created_at: float
    started_at: float
    finished_at: float
    run_config_json: str
    receipts: _containers.RepeatedCompositeFieldContainer[ReceiptInfo]
    privacy: RunPrivacyInfo
    def __init__(self, run_id: _Optional[int] = ..., owner: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., bundle_sha256: _Optional[str] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., run_config_json: _Optional[str] = ..., receipts: _Optional[_Iterable[_Union[ReceiptInfo, _Mapping]]] = ..., privacy: _Optional[_Union[RunPrivacyInfo, _Mapping]] = ...) -> None: ...

class RunPrivacyInfo(_message.Message):
    __slots__ = ("plan_json", "unit", "delta", "planned_epsilon", "spent_epsilon", "rounds_done")
    PLAN_JSON_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    PLANNED_EPSILON_FIELD_NUMBER: _ClassVar[int]
    SPENT_EPSILON_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_DONE_FIELD_NUMBER: _ClassVar[int]
    plan_json: str
    unit: str
    delta: float
    planned_epsilon: float
    spent_epsilon: float
    rounds_done: int
    def __init__(self, plan_json: _Optional[str] = ..., unit: _Optional[str] = ..., delta: _Optional[float] = ..., planned_epsilon: _Optional[float] = ..., spent_epsilon: _Optional[float] = ..., rounds_done: _Optional[int] = ...) -> None: ...

class ReceiptInfo(_message.Message):
    __slots__ = ("node", "decision", "manifest_sha256", "policy_sha256", "reason", "decided_by", "signed_at", "receipt", "signature")
    NODE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    POLICY_SHA256_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    SIGNED_AT_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node: str
    decision: str
    manifest_sha256: str
    policy_sha256: str
    reason: str
    decided_by: str
    signed_at: float
    receipt: bytes
    signature: bytes
    def __init__(self, node: _Optional[str] = ..., decision: _Optional[str] = ..., manifest_sha256: _Optional[str] = ..., policy_sha256: _Optional[str] = ..., reason: _Optional[str] = ..., decided_by: _Optional[str] = ..., signed_at: _Optional[float] = ..., receipt: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    def __init__(self, run_id: _Optional[int] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunInfo]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunInfo, _Mapping]]] = ...) -> None: ...

class StreamLogsRequest(_message.Message):
    __slots__ = ("run_id", "after_seq", "follow")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    after_seq: int
    follow: bool
    def __init__(self, run_id: _Optional[int] = ..., after_seq: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("seq", "created_at", "stream", "text")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    created_at: float
    stream: str
    text: str
    def __init__(self, seq: _Optional[int] = ..., created_at: _Optional[float] = ..., stream: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class StopRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    def __init__(self, run_id: _Optional[int] = ...) -> None: ...

class StopRunResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: str
    def __init__(self, status: _Optional[str] = ...) -> None: ...

class AddNodeRequest(_message.Message):
    __slots__ = ("certificate_pem", "renew")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    renew: bool
    def __init__(self, certificate_pem: _Optional[bytes] = ..., renew: _Optional[bool] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "name", "cert_fingerprint", "signing_key_fingerprint", "online", "last_seen_at", "enrolled_at", "renewal_cert_fingerprint")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CERT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_AT_FIELD_NUMBER: _ClassVar[int]
    RENEWAL_CERT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    name: str
    cert_fingerprint: str
    signing_key_fingerprint: str
    online: bool
    last_seen_at: float
    enrolled_at: float
    renewal_cert_fingerprint: str
    def __init__(self, node_id: _Optional[int] = ..., name: _Optional[str] = ..., cert_fingerprint: _Optional[str] = ..., signing_key_fingerprint: _Optional[str] = ..., online: _Optional[bool] = ..., last_seen_at: _Optional[float] = ..., enrolled_at: _Optional[float] = ..., renewal_cert_fingerprint: _Optional[str] = ...) -> None: ...

class RemoveNodeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveNodeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("run_id", "actions", "since")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    actions: _containers.RepeatedScalarFieldContainer[str]
    since: str
    def __init__(self, run_id: _Optional[str] = ..., actions: _Optional[_Iterable[str]] = ..., since: _Optional[str] = ...) -> None: ...

class AuditLine(_message.Message):
    __slots__ = ("line",)
    LINE_FIELD_NUMBER: _ClassVar[int]
    line: str
    def __init__(self, line: _Optional[str] = ...) -> None: ...
