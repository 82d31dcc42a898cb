"""Typed, validated settings of one index build."""

from __future__ import annotations

from dataclasses import asdict, dataclass

INDEX_TYPES = ("flat", "hnsw", "ivf")
DTYPES = ("auto", "bf16", "fp32")


@dataclass
class IndexConfig:
    """How documents become chunks and vectors. Chunking and model fields are recorded in
    the index (meta.json); a later build with different values is refused unless rebuilt."""

    embedding_model: str = "all-minilm-l6-v2"
    """Embedding preset name (see `ragtune models list`) or a local sentence-transformers folder."""
    chunk_size: int = 256
    """Maximum chunk length in tokens of the embedding model's tokenizer."""
    chunk_overlap: int = 32
    """Tokens shared by consecutive chunks of the same section."""
    index_type: str = "flat"
    """`flat` (exact, IndexIDMap2(IndexFlatIP)), `hnsw` or `ivf` (approximate, for large corpora)."""
    batch_size: int = 32
    """Texts per forward pass (batches are formed after sorting by token length)."""
    dtype: str = "auto"
    """Embedding dtype: `auto` (bf16 where the CPU/GPU is fast at it), `bf16` or `fp32`."""
    max_file_mb: float = 20.0
    """Files larger than this are skipped (and reported)."""
    hnsw_m: int = 32
    """HNSW graph degree."""
    hnsw_ef_search: int = 128
    """HNSW search breadth (higher: better recall, slower)."""
    ivf_nprobe: int = 16
    """IVF lists probed per query."""

    def __post_init__(self) -> None:
        if not isinstance(self.embedding_model, str) or not self.embedding_model.strip():
            raise ValueError("IndexConfig.embedding_model must be a preset name or a model folder")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 16:
            raise ValueError(f"IndexConfig.chunk_size must be an integer >= 16 tokens, got {self.chunk_size!r}")
        if not isinstance(self.chunk_overlap, int) or not 0 <= self.chunk_overlap < self.chunk_size:
            raise ValueError(f"IndexConfig.chunk_overlap must be an integer in [0, chunk_size={self.chunk_size}), "
                             f"got {self.chunk_overlap!r}")
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"IndexConfig.index_type must be one of {', '.join(INDEX_TYPES)}, got {self.index_type!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"IndexConfig.batch_size must be a positive integer, got {self.batch_size!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"IndexConfig.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not self.max_file_mb > 0:
            raise ValueError(f"IndexConfig.max_file_mb must be > 0, got {self.max_file_mb!r}")
        if self.hnsw_m < 4 or self.hnsw_ef_search < 1 or self.ivf_nprobe < 1:
            raise ValueError("IndexConfig needs hnsw_m >= 4, hnsw_ef_search >= 1 and ivf_nprobe >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    def chunking_key(self) -> dict:
        """The settings that change which vectors an index holds: they must match to update it."""
        return {"embedding_model": self.embedding_model, "chunk_size": self.chunk_size,
                "chunk_overlap": self.chunk_overlap}
