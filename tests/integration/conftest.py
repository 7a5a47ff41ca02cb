import pytest

DIGITS_CONFIG = """
name: digits-test
data: {name: digits, classes_per_batch: 5, samples_per_class: 8, eval_batch_size: 256}
protocol: {name: zero_shot}
augment: {train: pad_crop, eval: none, size: 8, padding: 1, flip: false, normalization: gray}
model: {backbone: small_cnn, width: 8, embedding_dim: 32}
loss: {name: triplet_margin, params: {margin: 0.2}}
miner: {name: triplet_margin, params: {margin: 0.2, type_of_triplets: semihard}}
train: {epochs: 2, log_every: 1}
schedule: {name: cosine, warmup_steps: 3}
report: {tsne_points: 200}
"""


@pytest.fixture
def digits_config(tmp_path):
    path = tmp_path / "digits.yaml"
    path.write_text(DIGITS_CONFIG)
    return path
