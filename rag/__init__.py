"""Image retrieval: CLIP embeddings in Chroma, index building, class votes, the retrieval agent."""

from rag.agent import RetrievalAgent
from rag.embedder import ImageEmbedder
from rag.errors import StoreError
from rag.evidence import Evidence
from rag.index import BuildReport, build_index, import_embeddings
from rag.npz import read_embeddings_npz
from rag.retriever import Retriever
from rag.store import ChromaStore, ImageIndex, IndexInfo, collection_name, default_index_dir
from rag.vote import SimilarityShareVote, SoftmaxVote, VoteRule, vote_from_dict

__all__ = [
    "BuildReport",
    "ChromaStore",
    "Evidence",
    "ImageEmbedder",
    "ImageIndex",
    "IndexInfo",
    "RetrievalAgent",
    "Retriever",
    "SimilarityShareVote",
    "SoftmaxVote",
    "StoreError",
    "VoteRule",
    "build_index",
    "collection_name",
    "default_index_dir",
    "import_embeddings",
    "read_embeddings_npz",
    "vote_from_dict",
]
