"""Bad corruption and data values are refused when the config is composed: before a tokenizer is
trained or a document read (``Corruption.check_node``, ``Corruption.check_keys``,
``preprocess.check_data_settings``), with the key, the value and the fix."""

from __future__ import annotations

import pytest

from clozelab.core.errors import ClozelabError

# (overrides, the message's start: key and value) for each corruption's integer and float knobs
BAD = [
    (("experiment=xlnet", "corruption.k=0"), r"corruption\.k=0: .*Fix:"),
    (("experiment=xlnet", "corruption.k=1"), r"corruption\.k=1: .*k must be >= 2"),
    (("experiment=xlnet", "corruption.max_gram=0"), r"corruption\.max_gram=0: .*Fix:"),
    (("experiment=xlnet", "corruption.num_predict=-3"), r"corruption\.num_predict=-3: "),
    (("corruption=mask", "corruption.rate=0"), r"corruption\.rate=0: "),
    (("corruption=mask", "corruption.max_predictions=0"), r"corruption\.max_predictions=0: "),
    (("corruption=whole_word", "corruption.prediction_rate=1.5"), r"prediction_rate=1\.5: "),
    (("corruption=span", "corruption.span_upper=0"), r"corruption\.span_upper=0: "),
    (("corruption=span", "corruption.span_lower=4", "corruption.span_upper=2"), r"span_upper=2: "),
    (("corruption=span", "corruption.geometric_p=0"), r"corruption\.geometric_p=0\.0: "),
    (("corruption=span", "corruption.geometric_p=1.2"), r"corruption\.geometric_p=1\.2: "),
    (("corruption=ngram", "corruption.max_n=0"), r"corruption\.max_n=0: "),
    (("corruption=phrase", "corruption.phrase_min_count=0"), r"phrase_min_count=0: "),
    (("corruption=phrase", "corruption.phrase_threshold=-1"), r"phrase_threshold=-1: "),
    (("corruption=ernie", "corruption.level_probs.basic=2"), r"level_probs\.basic=2: "),
    (("corruption=delete", "objective=[deletion]", "corruption.max_predictions=-1"),
     r"corruption\.max_predictions=-1: "),
    (("corruption=reorder", "objective=[order]", "corruption.window=0"), r"corruption\.window=0: "),
    (("corruption=insert", "objective=[insertion]", "corruption.random_ratio=1.5"),
     r"corruption\.random_ratio=1\.5: "),
    (("experiment=t5", "corruption.mean_span=0.5"), r"corruption\.mean_span=0\.5: "),
    (("experiment=t5", "corruption.n_sentinels=0"), r"corruption\.n_sentinels=0: "),
    (("experiment=t5", "corruption.density=1.0"), r"corruption\.density=1\.0: "),
    (("experiment=bart", "corruption.poisson_lambda=0"), r"corruption\.poisson_lambda=0: "),
    (("experiment=bart", "corruption.replace_length=2"), r"corruption\.replace_length=2: "),
    (("experiment=bart", "corruption.mask=1.5"), r"corruption\.mask=1\.5: "),
    (("experiment=bart", "corruption.rotate=-0.1"), r"corruption\.rotate=-0\.1: "),
    (("experiment=mass", "corruption.fragment=0"), r"corruption\.fragment=0: "),
    (("experiment=ernie_thu", "+corruption.steps.1.num_entities=0"),
     r"corruption\.num_entities=0: "),
    (("experiment=ernie_thu", "corruption.steps.1.replace_prob=1.5"),
     r"corruption\.replace_prob=1\.5: "),
    # a bare ERNIE-THU corruption: its dEA noise reads the entity links the data must keep
    (("corruption=ernie_thu",),
     r"corruption\.steps\[1\] \(.*EntityAlignmentNoise\) reads the batch keys \['entity_links'\]"
     r".*Fix: set data\.entity_links=true.*experiment=ernie_thu"),
    # with the entity links kept, but no dEA objective and no K-Encoder: the noise runs for nothing
    (("corruption=ernie_thu", "data.entity_links=true"),
     r"corruption\.steps\[1\] \(.*EntityAlignmentNoise\) writes only \['entity_labels', "
     r"'entity_links'\], which no objective, embedding or encoder of this run reads.*"
     r"experiment=ernie_thu"),
    (("data.entities=gazetteer",), r"data\.gazetteer=None: .*needs a gazetteer file.*Fix:"),
    (("data.entities=gazetteer", "data.gazetteer=/no/such/names.txt"),
     r"data\.gazetteer='/no/such/names.txt': the gazetteer file does not exist"),
    (("data.validation_fraction=0.7",), r"data\.validation_fraction=0\.7: must be in \[0, 0\.5\)"),
    (("data.max_documents=0",), r"data\.max_documents=0: must be an integer >= 1"),
    (("validation_reference={_target_:clozelab.corruption.mask.TokenMasking,rate:0}",),
     r"corruption\.rate=0: "),
    # model.compile: its settings were checked when the model was built, after the tokenizer
    # and the shards; a backend name given to model.compile compiled with inductor
    (("model.compile=true", "model.compile_mode=fastest"), r"model\.compile_mode='fastest': "),
    (("model.compile=true", "model.compile_backend=tensorrt-x"), r"compile_backend='tensorrt-x'"),
    (("model.compile=eager",), r"model\.compile='eager': must be true or false.*compile_backend"),
]  # fmt: skip


# odd but valid values: each scheme's own range, not a generic one, decides
GOOD = [
    ("corruption=reorder", "objective=[order]", "corruption.mode=sentence", "corruption.rate=1"),
    ("corruption=reorder", "objective=[order]", "corruption.mode=permute", "corruption.rate=1.0"),
    ("corruption=mask", "corruption.mask_prob=1", "corruption.random_prob=0",
     "corruption.keep_prob=0"),
    ("experiment=mass", "corruption.fragment=1"),
    ("experiment=bart", "corruption.rotate=1.0", "corruption.permute_sentences=1.0",
     "corruption.mask=0"),
    ("experiment=ernie_thu", "corruption.steps.1.replace_prob=0", "corruption.steps.1.mask_prob=0"),
    ("data.validation_fraction=0",),
]  # fmt: skip


@pytest.mark.parametrize("overrides", GOOD, ids=lambda v: " ".join(v))
def test_odd_but_valid_values_are_not_refused(compose_pretrain, overrides):
    from clozelab.training.validate import validate_pretrain

    validate_pretrain(compose_pretrain(*overrides))


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=lambda v: str(v))
def test_bad_values_are_refused_before_any_data_is_read(
    compose_pretrain, tmp_path, overrides, message
):
    from clozelab.pretrain import pretrain

    cfg = compose_pretrain(*overrides)
    cfg.paths.cache_dir = str(tmp_path / "fresh_cache")  # where a tokenizer and shards would go
    with pytest.raises(ClozelabError, match=message):
        pretrain(cfg)
    assert not (tmp_path / "fresh_cache").exists()  # no tokenizer trained, no shard built
    assert not (tmp_path / "run").exists()  # no run directory either


@pytest.mark.parametrize(
    ("command", "overrides", "message"),
    [
        ("prepare", ("data.entities=gazetteer",), r"data\.gazetteer=None: "),
        ("prepare", ("data.validation_fraction=-0.1",), r"data\.validation_fraction=-0\.1: "),
        ("preview", ("corruption=plm", "corruption.k=0"), r"corruption\.k=0: "),
        ("preview", ("corruption=ernie_thu",), r"reads the batch keys \['entity_links'\]"),
    ],
)
def test_prepare_and_preview_refuse_them_too(
    compose_pretrain, text_corpus, tmp_path, command, overrides, message
):
    from clozelab.prepare import prepare
    from clozelab.preview import preview

    run = {"prepare": prepare, "preview": preview}[command]
    cfg = compose_pretrain(f"data.corpus={text_corpus}", *overrides, name=command, tiny=False)
    cfg.paths.cache_dir = str(tmp_path / "fresh_cache")
    with pytest.raises(ClozelabError, match=message):
        run(cfg)
    assert not (tmp_path / "fresh_cache").exists()


def test_every_corruption_preset_passes_its_own_check(compose_pretrain):
    """``check_node`` builds each shipped preset with the stand-in tokenizer: none is refused."""
    from clozelab.core.config import component_class, conf_dir
    from clozelab.corruption.base import Corruption

    for path in sorted((conf_dir() / "corruption").glob("*.yaml")):
        cfg = compose_pretrain(f"corruption={path.stem}")
        component_class(cfg.corruption, "corruption", Corruption).check_node(cfg.corruption)
