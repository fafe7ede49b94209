from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_FORMAT_UNSPECIFIED: _ClassVar[ModelFormat]
    MODEL_FORMAT_ONNX: _ClassVar[ModelFormat]
    MODEL_FORMAT_PTE: _ClassVar[ModelFormat]
MODEL_FORMAT_UNSPECIFIED: ModelFormat
MODEL_FORMAT_ONNX: ModelFormat
MODEL_FORMAT_PTE: ModelFormat

class GetCandidatesRequest(_message.Message):
    __slots__ = ("user_id", "history", "num_candidates", "exclude", "request_id", "device_model_version", "with_vectors", "missing_vectors")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    MISSING_VECTORS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    history: _containers.RepeatedScalarFieldContainer[int]
    num_candidates: int
    exclude: _containers.RepeatedScalarFieldContainer[int]
    request_id: str
    device_model_version: str
    with_vectors: bool
    missing_vectors: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, user_id: _Optional[str] = ..., history: _Optional[_Iterable[int]] = ..., num_candidates: _Optional[int] = ..., exclude: _Optional[_Iterable[int]] = ..., request_id: _Optional[str] = ..., device_model_version: _Optional[str] = ..., with_vectors: _Optional[bool] = ..., missing_vectors: _Optional[_Iterable[int]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("item_id", "score")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    score: float
    def __init__(self, item_id: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class GetCandidatesResponse(_message.Message):
    __slots__ = ("candidates", "generator_version", "generation_ms", "request_id", "vectors")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    generator_version: str
    generation_ms: float
    request_id: str
    vectors: ItemVectors
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., generator_version: _Optional[str] = ..., generation_ms: _Optional[float] = ..., request_id: _Optional[str] = ..., vectors: _Optional[_Union[ItemVectors, _Mapping]] = ...) -> None: ...

class ItemVectors(_message.Message):
    __slots__ = ("model_version", "dim", "item_ids", "values", "scales")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    dim: int
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    values: bytes
    scales: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, model_version: _Optional[str] = ..., dim: _Optional[int] = ..., item_ids: _Optional[_Iterable[int]] = ..., values: _Optional[bytes] = ..., scales: _Optional[_Iterable[float]] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape", "dim_names")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DIM_NAMES_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dim_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dim_names: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelManifest(_message.Message):
    __slots__ = ("model_name", "version", "format", "file_name", "sha256", "size_bytes", "inputs", "outputs", "history_length", "num_items", "vocab_hash", "created_at", "metrics", "golden", "untrained_items", "kind", "vector_dim", "vector_table_sha256")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    VOCAB_HASH_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    GOLDEN_FIELD_NUMBER: _ClassVar[int]
    UNTRAINED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VECTOR_DIM_FIELD_NUMBER: _ClassVar[int]
    VECTOR_TABLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    format: ModelFormat
    file_name: str
    sha256: str
    size_bytes: int
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    history_length: int
    num_items: int
    vocab_hash: str
    created_at: str
    metrics: _containers.ScalarMap[str, float]
    golden: GoldenExample
    untrained_items: _containers.RepeatedScalarFieldContainer[int]
    kind: str
    vector_dim: int
    vector_table_sha256: str
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., format: _Optional[_Union[ModelFormat, str]] = ..., file_name: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., history_length: _Optional[int] = ..., num_items: _Optional[int] = ..., vocab_hash: _Optional[str] = ..., created_at: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., golden: _Optional[_Union[GoldenExample, _Mapping]] = ..., untrained_items: _Optional[_Iterable[int]] = ..., kind: _Optional[str] = ..., vector_dim: _Optional[int] = ..., vector_table_sha256: _Optional[str] = ...) -> None: ...

class GoldenExample(_message.Message):
    __slots__ = ("history", "candidates", "scores", "vectors")
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    history: _containers.RepeatedScalarFieldContainer[int]
    candidates: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    vectors: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, history: _Optional[_Iterable[int]] = ..., candidates: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., vectors: _Optional[_Iterable[float]] = ...) -> None: ...

class GetLatestManifestRequest(_message.Message):
    __slots__ = ("format", "current_version", "kind")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    format: ModelFormat
    current_version: str
    kind: str
    def __init__(self, format: _Optional[_Union[ModelFormat, str]] = ..., current_version: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class GetLatestManifestResponse(_message.Message):
    __slots__ = ("manifest", "update_available")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    UPDATE_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    manifest: ModelManifest
    update_available: bool
    def __init__(self, manifest: _Optional[_Union[ModelManifest, _Mapping]] = ..., update_available: _Optional[bool] = ...) -> None: ...

class DownloadModelRequest(_message.Message):
    __slots__ = ("version", "format")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    version: str
    format: ModelFormat
    def __init__(self, version: _Optional[str] = ..., format: _Optional[_Union[ModelFormat, str]] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("offset", "data", "sha256", "total_size")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    sha256: str
    total_size: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...
