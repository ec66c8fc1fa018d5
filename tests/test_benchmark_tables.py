"""The integration benchmark's report (benchmarks/integration.py): what its tables say about the code version."""

import importlib.util
import os

import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))


def _integration():
    spec = importlib.util.spec_from_file_location(
        "integration_benchmark", os.path.join(HERE, "..", "benchmarks", "integration.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_commit_that_looks_like_a_number_is_written_as_it_is(tmp_path):
    """Commit 4227e83 came out of the table as 4.227e+86 (tabulate read it as a float), and --merge read it
    back from the csv as a float too."""
    integration = _integration()
    df = pd.DataFrame({"dataset": "d", "method": ["fe", "pca"], "metric": "knn_batch_fraction",
                       "label": "batch", "value": [0.05, 0.2], "commit": ["4227e83", "21157ae"]})
    markdown = integration.dataset_table(df).to_markdown(index=False)
    assert "`4227e83`" in markdown and "e+86" not in markdown
    df.to_csv(tmp_path / "old.csv", index=False)
    assert integration.read_results(str(tmp_path / "old.csv")).commit.tolist() == ["4227e83", "21157ae"]


def test_the_reported_command_can_be_pasted_back_with_its_json_overrides():
    """A report wrote `--overrides {"schedule": {"batch_size": 2048}}` unquoted, which a shell splits apart."""
    import shlex

    argv = ["--datasets", "covid", "--overrides", '{"schedule": {"batch_size": 2048}}']
    command = _integration().command_line(argv)
    assert shlex.split(command)[2:] == argv
