"""k-means and NMI / AMI against scikit-learn on known clusterings."""

import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from deepmetric.evaluation import clustering_metrics, kmeans
from deepmetric.evaluation.knn import faiss_available

BACKENDS = ["torch"] + (["faiss"] if faiss_available() else [])


def blobs(n_blobs=6, per_blob=40, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_blobs, dim, generator=g), dim=1)
    blob = torch.arange(n_blobs).repeat_interleave(per_blob)
    return centres[blob] + 0.01 * torch.randn(len(blob), dim, generator=g), blob


def same_partition(a, b):
    return normalized_mutual_info_score(a.numpy(), b.numpy()) == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_recovers_separated_blobs(backend):
    x, blob = blobs()
    assert same_partition(kmeans(x, 6, backend=backend), blob)


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_clustering_scores_one(backend):
    x, blob = blobs()
    m = clustering_metrics(x, blob, backend=backend)
    assert m["nmi"] == pytest.approx(1.0) and m["ami"] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_clustering_against_sklearn(backend):
    # labels merge blobs 0+1 and 2+3: k-means with 6 clusters finds the blobs, so the scores are sklearn's
    # scores of the labels against the blob partition
    x, blob = blobs()
    labels = torch.tensor([0, 0, 1, 1, 2, 3])[blob]
    m = clustering_metrics(x, labels, n_clusters=6, backend=backend)
    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(labels.numpy(), blob.numpy()))
    assert m["ami"] == pytest.approx(adjusted_mutual_info_score(labels.numpy(), blob.numpy()))
    assert m["nmi"] < 0.95


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_is_seeded(backend):
    x = torch.randn(300, 5)
    assert torch.equal(kmeans(x, 7, seed=3, backend=backend), kmeans(x, 7, seed=3, backend=backend))


def test_torch_kmeans_many_clusters_and_empty_cluster_reseeding():
    x = torch.randn(2000, 4)
    x[:1000] = 0.0  # half the points identical: empty clusters appear and must be re-seeded
    assignment = kmeans(x, 1100, backend="torch", max_iter=5)
    assert assignment.shape == (2000,) and int(assignment.max()) < 1100


def test_bad_clustering_input():
    with pytest.raises(ValueError, match="n_clusters"):
        clustering_metrics(torch.randn(5, 3), [0, 1, 0, 1, 0], n_clusters=6)
    with pytest.raises(ValueError, match="NaN"):
        clustering_metrics(torch.tensor([[float("nan")]]), [0])
    with pytest.raises(ValueError, match="has 2 entries"):
        clustering_metrics(torch.randn(5, 3), [0, 1])
    with pytest.raises(ValueError, match="backend"):
        kmeans(torch.randn(5, 3), 2, backend="sklearn")
