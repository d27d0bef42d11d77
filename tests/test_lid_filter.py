"""``collect --lid-filter P``: calibration text in the wrong language is dropped before it reaches the
statistics (fastText offline), counted per language in the STATS metadata; the statistics equal those of the
corpus with those texts removed by hand; off by default."""

from __future__ import annotations

import torch

EN = ["The weather was pleasant this morning, so we walked to the market along the river.",
      "My brother works at the hospital and usually comes home very late in the evening.",
      "She bought three books about the history of the city and read them all in one week.",
      "The children were playing football in the park while their parents talked on the benches.",
      "We need to finish the report before the meeting on Thursday afternoon.",
      "The train to the capital leaves every hour from the central station.",
      "He has never seen the ocean, although he has always wanted to travel to the coast.",
      "The museum opens at nine o'clock and closes early on Sundays during the winter."]
FR = ["Le temps était agréable ce matin, alors nous avons marché jusqu'au marché le long de la rivière.",
      "Mon frère travaille à l'hôpital et rentre généralement très tard le soir.",
      "Elle a acheté trois livres sur l'histoire de la ville et les a tous lus en une semaine."]


def test_lid_filter_drops_wrong_language_texts_and_counts_them(tmp_path, tiny_model_dir):
    import lapeval
    from lapeval.identification.stats import Stats

    corp, clean = tmp_path / "corp", tmp_path / "clean"
    corp.mkdir(), clean.mkdir()
    mixed = EN[:4] + FR + EN[4:]  # English "calibration text" with French mixed in
    (corp / "en.txt").write_text("\n".join(mixed) + "\n")
    (corp / "fr.txt").write_text("\n".join(FR) + "\n")
    (clean / "en.txt").write_text("\n".join(EN) + "\n")
    (clean / "fr.txt").write_text("\n".join(FR) + "\n")
    kw = dict(max_tokens=10**6, n_sentences=4, batch_tokens=512, batch_size=8, device="cpu", progress=False,
              log=lambda m: None)
    filtered = lapeval.collect(str(tiny_model_dir), "en,fr", f"files:{corp}/{{lang}}.txt", tmp_path / "f.safetensors",
                               lid_filter=0.5, **kw)
    by_hand = lapeval.collect(str(tiny_model_dir), "en,fr", f"files:{clean}/{{lang}}.txt", tmp_path / "c.safetensors", **kw)
    unfiltered = lapeval.collect(str(tiny_model_dir), "en,fr", f"files:{corp}/{{lang}}.txt", tmp_path / "u.safetensors", **kw)
    assert torch.equal(filtered.over_zero, by_hand.over_zero) and torch.equal(filtered.n_tokens, by_hand.n_tokens)
    assert not torch.equal(unfiltered.n_tokens, by_hand.n_tokens)  # off by default: the French lines counted
    saved = Stats.load(tmp_path / "f.safetensors").meta["lid_filter"]
    assert saved["threshold"] == 0.5 and saved["texts"]["en"] == {"read": 11, "dropped": 3}
    assert saved["texts"]["fr"] == {"read": 3, "dropped": 0}
    assert "lid_filter" not in Stats.load(tmp_path / "u.safetensors").meta


def test_lid_filter_bad_value_is_one_line(tmp_path, capsys, tiny_model_dir):
    from lapeval.cli import main

    (tmp_path / "en.txt").write_text(EN[0] + "\n")
    rc = main(["collect", "--model", str(tiny_model_dir), "--languages", "en", "--corpus", f"files:{tmp_path}/{{lang}}.txt",
               "--out", str(tmp_path / "s.safetensors"), "--lid-filter", "1.5"])
    err = capsys.readouterr().err
    assert rc == 2 and "--lid-filter" in err and err.count("\n") == 1
