#!/usr/bin/python3
"""Trains field-ai's model: a decision tree on the iris data set that Debian's
python3-sklearn ships (no download), exported as plain JSON so the serving
image needs nothing but Python's standard library.

Run with Debian's python3 (apt-get install python3-sklearn):
    /usr/bin/python3 recipes/field-ai/train_iris.py recipes/field-ai/model/iris-tree.json
then put the printed sha256 into recipes/field-ai.toml ([[models]] sha256).
The output is deterministic: fixed random_state, sorted keys, no timestamps.
"""
import hashlib
import json
import sys

from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier


def main(out_path):
    iris = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        iris.data, iris.target, test_size=0.3, random_state=0, stratify=iris.target
    )
    clf = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x_train, y_train)
    t = clf.tree_
    model = {
        "kind": "decision-tree",
        "dataset": "iris (scikit-learn bundled copy of the UCI data)",
        "features": list(iris.feature_names),
        "classes": [str(c) for c in iris.target_names],
        "test_accuracy": round(float(clf.score(x_test, y_test)), 4),
        "nodes": [
            {
                "feature": int(t.feature[i]),
                "threshold": round(float(t.threshold[i]), 6),
                "left": int(t.children_left[i]),
                "right": int(t.children_right[i]),
                "class": int(t.value[i][0].argmax()),
            }
            for i in range(t.node_count)
        ],
    }
    data = (json.dumps(model, indent=1, sort_keys=True) + "\n").encode()
    with open(out_path, "wb") as f:
        f.write(data)
    print("wrote", out_path, "test accuracy", model["test_accuracy"])
    print("sha256", hashlib.sha256(data).hexdigest())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "iris-tree.json")
