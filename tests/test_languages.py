"""Languages (pure, fast): normalisation through langcodes beyond lapeval's table, the language of lm-eval's
own multilingual tasks by family, the tasks that deliberately get none, ``lang_map``, the task's metadata,
``lang=self`` routing of unknown / not-in-mask tasks, and the report's (family, column) split."""

from __future__ import annotations

import pytest

from lapeval import languages as L
from lapeval.errors import LanguageError, LapevalError


# ---- normalisation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spelling,code", [
    ("deu", "de"), ("German", "de"), ("Deutsch", "de"), ("tam_Taml", "ta"), ("yo", "yo"), ("yor_Latn", "yo"),
    ("jp", "ja"), ("jpn_Jpan", "ja"), ("Japanese", "ja"), ("arb", "ar"), ("swh", "sw"), ("zsm", "ms"),
    ("tgl", "tl"), ("fil", "tl"), ("quy", "qu"), ("zh-CN", "zh"), ("AR_XY", "ar"), ("nob", "nb"),
    ("North Macedonian", "mk"), ("Farsi", "fa"), ("ars", "ars"), ("en", "en"), ("tlh", "tlh"),
])
def test_normalize_through_langcodes(spelling, code):
    assert L.normalize(spelling) == code


@pytest.mark.parametrize("bad", ["xx", "zz", "und", "qaa", "", "virology", "klingon", "klingonish"])
def test_unknown_language_is_one_line(bad):
    with pytest.raises(LanguageError) as e:
        L.normalize(bad)
    assert "\n" not in str(e.value) and "unknown language" in str(e.value)


def test_languages_outside_the_table():
    yo = L.get("yor")
    assert (yo.code, yo.name, yo.script) == ("yo", "Yoruba", "Latn")
    assert "yo" not in L.LANGUAGES
    with pytest.raises(LanguageError, match=r"no FLORES-200 code known for yo \(Yoruba\)") as e:
        yo.flores
    assert "\n" not in str(e.value)
    assert L.get("ja").flores == "jpn_Jpan" and L.get("Japanese").xwinograd == "jp"
    assert L.parse_list("en,yo+deu") == ["en", "yo", "de"]
    with pytest.raises(LanguageError, match="twice"):
        L.parse_list("de,deu")


def test_a_mask_holds_any_iso_code(tmp_path):
    import torch

    from lapeval.masks import NeuronMask

    assigned = torch.zeros(2, 1, 4, dtype=torch.bool)
    assigned[0, 0, 0] = assigned[1, 0, 1] = True
    mask = NeuronMask.from_assignment(assigned, ["en", "yo"], {})
    saved = NeuronMask.load(mask.save(tmp_path / "m.safetensors"))
    assert saved.languages == ["en", "yo"] and saved.code("yor_Latn") == "yo"


def test_corpus_patterns_need_flores_only_when_named(tmp_path):
    from lapeval.identification.corpus import Source

    (tmp_path / "yo.txt").write_text("Ẹ kú àárọ̀\n", encoding="utf-8")
    assert Source("files", str(tmp_path / "{lang}.txt")).local_file("yo") == tmp_path / "yo.txt"
    with pytest.raises(LanguageError, match="no FLORES-200 code"):
        Source("files", str(tmp_path / "{flores}.txt")).local_file("yo")


# ---- the language of a task --------------------------------------------------------------------------
# one or more real names of lm-eval 0.4.13 per family (checked against its index by
# benchmarks/task_language_coverage.py), with the language of their documents
FAMILY_SAMPLES = {
    "belebele": [("belebele_ind_Latn", "id"), ("belebele_tam_Taml", "ta"), ("belebele_arb_Latn", "ar"),
                 ("belebele_zho_Hant", "zh"), ("belebele_yor_Latn", "yo"), ("belebele_amh_prompt_1", "am")],
    "xnli": [("xnli_de", "de"), ("xnli_sw", "sw"), ("xnli_eu_native", "eu"), ("xnli_va", "ca"),
             ("xnli_es_spanish_bench", "es")],
    "xstorycloze": [("xstorycloze_my", "my"), ("xstorycloze_ca", "ca")],
    "mgsm": [("mgsm_direct_bn", "bn"), ("mgsm_native_cot_th", "th"), ("mgsm_en_cot_de", "de")],
    "paws-x": [("paws_ko", "ko"), ("paws_es_spanish_bench", "es")],
    "global_mmlu": [("global_mmlu_ar_business", "ar"), ("global_mmlu_full_fil_abstract_algebra", "tl"),
                    ("global_mmlu_full_yo_college_medicine", "yo")],
    "okapi": [("arc_hy", "hy"), ("hellaswag_ml", "ml"), ("m_mmlu_nb", "nb"), ("truthfulqa_sr_mc2", "sr"),
              ("arc_ca_challenge", "ca")],
    "xquad": [("xquad_th", "th")],
    "tydiqa": [("tydiqa_goldp_te", "te")],
    "lambada_multilingual": [("lambada_openai_mt_it", "it"), ("lambada_openai_mt_stablelm_nl", "nl")],
    "mmlu_prox": [("mmlu_prox_wo_history", "wo"), ("mmlu_prox_lite_zu_chemistry", "zu"), ("mmlu_prox_id", "id")],
    "include": [("include_base_44_italian_stem", "it"), ("include_base_44_north_macedonian_few_shot_en_social_science", "mk"),
                ("include_base_44_tagalog_few_shot_og", "tl")],
    "global_piqa": [("global_piqa_parallel_cloze_deu_latn", "de"), ("global_piqa_nonparallel_cloze_por_latn_port", "pt"),
                    ("global_piqa_parallel_cloze_cmn_hans", "zh"), ("global_piqa_nonparallel_generation_swh_latn", "sw")],
    "xcopa": [("xcopa_qu", "qu"), ("xcopa_eu", "eu")],
    "xwinograd": [("xwinograd_jp", "ja")],
    "openai-mmmlu": [("mmmlu_zh_cn_sociology", "zh"), ("mmmlu_es_la_international_law", "es"), ("mmmlu_bn_bd", "bn")],
    "mlqa": [("mlqa_de_de", "de")],
    "multiblimp": [("multiblimp_ces", "cs"), ("multiblimp_deu", "de")],
    "afrobench": [("afrimgsm_hau_prompt_1", "ha"), ("afrixnli_yor_prompt_3", "yo"), ("sib_fuv_prompt_3", "fuv"),
                  ("masakhaner_pcm_prompt_1", "pcm"), ("xlsum_pidgin_prompt_1", "pcm"), ("openai_mmlu_ara_prompt_1", "ar")],
    "truthfulqa-multi": [("truthfulqa-multi_mc2_gl", "gl")],
    "llama3": [("mmlu_th_llama_astronomy", "th")],
    "toksuite": [("toksuite_farsi_canonical", "fa"), ("toksuite_turkish_colloquial", "tr")],
    "pisa": [("pisa_ch", "zh")],
    "crows_pairs": [("crows_pairs_french_age", "fr")],
}


@pytest.mark.parametrize("family", sorted(FAMILY_SAMPLES))
def test_lm_eval_families(family):
    for name, code in FAMILY_SAMPLES[family]:
        found = L.resolve_task(name)
        assert (found.language, found.source) == (code, "family"), (name, found)


def test_at_least_twelve_families_are_sampled():
    assert len(FAMILY_SAMPLES) >= 12


@pytest.mark.parametrize("name", [
    "arc_easy", "hellaswag", "mmlu_abstract_algebra", "gsm8k", "winogrande", "belebele", "xnli", "mmlu_prox",
    "wmt16-de-en", "wmt14-en-fr", "iwslt2017-en-ar", "wmt-ro-en-t5-prompt", "flores_eng_Latn-fra_Latn_prompt_1",
    "ntrex_afr_Latn-eng_Latn_prompt_1", "basque_bench_flores_en-eu", "flores_afr-eng", "mlqa_de_en",
    "afrimmlu_translate_amh_prompt_1", "afrimgsm_cot_translate_yor_prompt_2", "afriqa_hau_prompt_1",
    "agieval_cn", "evalita-mp_at", "code2text_go", "ethics_cm", "commonsense_qa", "polemo2_in", "csatqa_gr",
    "toksuite_math_turkish", "kmmlu_accounting", "AraDiCE_ArabicMMLU_stem_egy", "lss", "flores_mt",
])
def test_no_language_never_a_guess(name):
    assert L.task_language(name) is None, L.resolve_task(name)


def test_lapevals_own_tasks_keep_their_rules():
    assert [L.task_language(t) for t in ("xcopa_id", "xwinograd_jp", "include_base_44_indonesian_stem", "lss_id",
                                         "flores_ppl_sw", "lang_steer_fr", "flores_mt_en-fr", "flores_mt_fr-en",
                                         "lapeval_xwinograd_ja", "lapeval_include_zh", "lss_yo")] == [
        "id", "ja", "id", "id", "sw", "fr", "fr", "fr", "ja", "zh", "yo"]
    assert L.resolve_task("flores_mt_en-fr").source == "lapeval"


def test_metadata_wins_over_the_name():
    assert L.task_language("arc_easy", {"version": 1, "lapeval_language": "en"}) == "en"
    assert L.task_language("xnli_de", {"lapeval_language": "French"}) == "fr"
    assert L.resolve_task("xnli_de", {"lapeval_language": "fr"}).source == "metadata"
    assert L.task_language("xnli_de", {"version": 1.0}) == "de"
    with pytest.raises(LanguageError, match=r"task xnli_de: metadata.lapeval_language 'xx' is no language"):
        L.task_language("xnli_de", {"lapeval_language": "xx"})


# ---- lang_map ------------------------------------------------------------------------------------
def test_lang_map_string_dict_and_globs():
    m = L.LangMap.parse("belebele_*:id;xnli_xx:fr; kmmlu*:Korean;mgsm_en_cot_*:none")
    assert m.to_dict() == {"belebele_*": "id", "xnli_xx": "fr", "kmmlu*": "ko", "mgsm_en_cot_*": None}
    assert L.LangMap.parse(str(m)) == m
    assert L.task_language("kmmlu_accounting", lang_map=m) == "ko"
    assert L.task_language("belebele_tam_Taml", lang_map=m) == "id"  # the user's mapping wins over a rule
    assert L.task_language("xnli_xx", lang_map=m) == "fr"
    assert L.task_language("mgsm_en_cot_de", lang_map=m) is None and L.task_language("mgsm_en_cot_de") == "de"
    assert L.task_language("xnli_de", {"lapeval_language": "sw"}, lang_map=m) == "sw"  # not covered: metadata
    assert L.task_language("arc_easy", {"lapeval_language": "sw"}, lang_map={"arc_*": "en"}) == "en"
    exact = L.LangMap.parse({"xnli_*": "fr", "xnli_de": "de"})
    assert L.task_language("xnli_de", lang_map=exact) == "de" and L.task_language("xnli_sw", lang_map=exact) == "fr"
    assert L.LangMap.parse(None) is None and L.LangMap.parse("") is None and L.LangMap.parse({}) is None


@pytest.mark.parametrize("bad,msg", [("belebele_*", "write PATTERN:LANG"), (":id", "write PATTERN:LANG"),
                                     ("xnli_sw:klingonish", "is no language"), ("a:en;a:fr", "given twice"),
                                     (42, "PATTERN:LANG pairs")])
def test_bad_lang_map_is_one_line(bad, msg):
    with pytest.raises(L.LangMapError, match=msg) as e:
        L.LangMap.parse(bad)
    assert isinstance(e.value, LapevalError) and isinstance(e.value, ValueError) and "\n" not in str(e.value)


def test_grid_lang_map_key(tmp_path):
    from lapeval.grid.config import GridConfig, GridError

    cfg = GridConfig(model="m", tasks=["kmmlu_accounting"], lang_map="kmmlu*:ko")
    assert cfg.lang_map == {"kmmlu*": "ko"}
    assert GridConfig(model="m", tasks=["t"], model_args={"lang_map": "t:fr"}).lang_map == {"t": "fr"}
    with pytest.raises(GridError, match="is no language"):
        GridConfig(model="m", tasks=["t"], lang_map={"t": "xx"})
    with pytest.raises(GridError, match="give it once"):
        GridConfig(model="m", tasks=["t"], lang_map="t:fr", model_args={"lang_map": "t:de"})


# ---- lang=self routing (no model) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def mask():
    import torch

    from lapeval.masks import NeuronMask

    assigned = torch.zeros(3, 2, 8, dtype=torch.bool)
    for i in range(3):
        assigned[i, 0, i] = True
    return NeuronMask.from_assignment(assigned, ["en", "fr", "id"], {"p_max": torch.ones(3, 2, 8)})


def test_self_routes_known_languages_and_counts_the_rest(mask):
    from lapeval.intervention.setting import build_setting

    s = build_setting(mask, "self", "set", "p_max", None)
    names = ["xnli_fr", "xnli_sw", "belebele_ind_Latn", "arc_easy", "xnli_fr", "xnli_sw", "xnli_sw", None,
             "belebele_fra_Latn", "xnli_en"]
    groups = dict(s.route(names))
    for langs in groups:  # as LapeLM runs each group
        if langs is not None:
            s.intervention(langs)
    assert groups[("fr",)] == [0, 4, 8] and groups[("id",)] == [2] and groups[("en",)] == [9]
    assert groups[None] == [1, 3, 5, 6, 7]
    d = s.describe()
    assert d["lang"] == "self" and d["languages"] == ["en", "fr", "id"]
    assert d["unmodified"]["xnli_sw"] == {"requests": 3, "reason": "sw not in mask"}
    assert d["unmodified"]["arc_easy"]["requests"] == 1 and "lang_map=" in d["unmodified"]["arc_easy"]["reason"]
    assert d["unmodified"]["None"]["reason"] == "the request names no task"
    s.route(["xnli_sw"])  # counts add up over calls of one setting
    assert s.describe()["unmodified"]["xnli_sw"]["requests"] == 4


def test_self_with_lang_map_and_metadata(mask):
    from lapeval.intervention.setting import build_setting

    s = build_setting(mask, "self", "set", "p_max", None, lang_map="xnli_sw:fr;arc_*:en")
    groups = dict(s.route(["xnli_sw", "arc_easy", "my_task"], metadata={"my_task": {"lapeval_language": "id"}}))
    assert groups == {("fr",): [0], ("en",): [1], ("id",): [2]}
    d = s.describe()
    assert d["unmodified"] == {} and d["lang_map"] == {"xnli_sw": "fr", "arc_*": "en"}
    explicit = build_setting(mask, "fr", "set", "p_max", None)
    assert explicit.route(["xnli_sw", "arc_easy"]) == [(("fr",), [0, 1])] and "unmodified" not in explicit.describe()


def test_strict_language_of_still_explains(mask):
    from lapeval.intervention.setting import LapeConfigError, build_setting
    from lapeval.masks import MaskError

    s = build_setting(mask, "self", "zero", None, None)
    assert s.language_of("belebele_fra_Latn") == "fr"
    with pytest.raises(MaskError, match=r"task xnli_sw is in sw, which the mask has no neurons for \(it has: en, fr, id\)"):
        s.language_of("xnli_sw")
    with pytest.raises(LapeConfigError, match="names no language"):
        s.language_of("arc_easy")


# ---- the report's (family, column) --------------------------------------------------------------------
def test_report_family_columns():
    from lapeval.grid.report import family

    assert family("belebele_ind_Latn") == ("belebele", "ind_Latn")
    assert family("xnli_fr") == ("xnli", "fr") and family("xstorycloze_sw") == ("xstorycloze", "sw")
    assert family("xcopa_id") == ("xcopa", "id") and family("flores_mt_en-fr") == ("flores_mt", "en-fr")
    assert family("lss_en") == ("lss", "en") and family("include_base_44_italian_stem") == ("include_base_44_stem", "italian")
    assert family("global_mmlu_full_de_law") == ("global_mmlu_full_law", "de")
    assert family("arc_easy") == ("arc_easy", "-") and family("wmt16-de-en") == ("wmt16-de-en", "-")
    assert family("kmmlu_accounting", lang_map="kmmlu*:ko") == ("kmmlu", "accounting")
    assert family("my_task_x", {"lapeval_language": "fr"}) == ("my_task", "x")
