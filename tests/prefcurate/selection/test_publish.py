"""The published dataset: kept pairs in TRL's schema with their scores, and a card datasets reads."""

from __future__ import annotations


def test_the_published_dataset_card_names_files_and_features(tmp_path):
    import pandas as pd
    import yaml

    from prefcurate.data.pairs import pair_id, pairs_from_rows
    from prefcurate.selection.publish import dataset_card, kept_pairs
    from prefcurate.selection.selection import Selection

    rows = []
    for i in range(4):
        prompt = [{"role": "user", "content": f"repeat apple {i}"}]
        chosen, rejected = [{"role": "assistant", "content": "apple done"}], [{"role": "assistant", "content": "zz"}]
        rows.append({"pair_id": pair_id(prompt, chosen, rejected), "prompt": prompt, "chosen": chosen, "rejected": rejected,
                     "score_chosen": 9.0, "score_rejected": 2.0, "source": "toy", "prompt_id": str(i)})
    pool = pairs_from_rows(rows)
    ids = [r["pair_id"] for r in rows]
    scores = pd.DataFrame({"pair_id": ids, "if": [0.1, 0.2, 0.3, 0.4], "tif": [False, True, True, False],
                           "lossdiff": [1.0, 2.0, 3.0, 4.0], "irm": [0.5, 0.6, 0.7, 0.8]})
    kept = pd.DataFrame({"pair_id": [ids[2], ids[1]]})
    frame = kept_pairs(pool, kept, scores)
    assert frame["pair_id"].tolist() == [ids[2], ids[1]] and frame["lossdiff"].tolist() == [3.0, 2.0]
    assert frame["chosen"].iloc[0][0]["content"] == "apple done" and frame["source"].tolist() == ["toy", "toy"]
    selection = Selection(rule="lossdiff-irm", params={"band": [12.5, 87.5]}, n_pool=4, n_kept=2, kept_fraction=0.5,
                          score_columns=[], kept_ids=kept["pair_id"].tolist())
    card = dataset_card(frame, selection=selection, bundle={"sft": "abc"}, version="v-1", model_uri="sft", n_pool=4)
    header = yaml.safe_load(card.split("---")[1])
    assert header["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*.parquet"}]
    features = {f["name"]: f for f in header["dataset_info"]["features"]}
    assert features["prompt"]["list"][1] == {"name": "content", "dtype": "string"} and features["tif"]["dtype"] == "bool"
    assert "`lossdiff-irm`" in card and "2 of 4" in card
