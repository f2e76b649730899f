"""`lorafit budget` on a config that does not fit: the count is printed as always, and the exit status says so."""
import json


def test_over_budget_exits_1_with_the_fix_on_stderr(cli, roberta_dir):
    """It exited 0 under 'OVER BUDGET', so `lorafit budget CONFIG && lorafit train CONFIG` went on to a train that
    refuses the same config, and a script could not tell a fitting config from one over the limit."""
    result = cli("budget", "--model", roberta_dir, "--target-modules", "value", "--r", "23", "--json")
    assert result.code == 1
    report = json.loads(result.out)  # the JSON still comes, whole, on stdout
    assert report["fits"] is False and report["total"] == 1_017_604
    assert result.err.strip().count("\n") == 0  # one line, the same words train refuses with
    assert "over budget: 1,017,604 trainable parameters > budget 1,000,000" in result.err
    assert "largest rank that fits: r=22" in result.err

    table = cli("budget", "--model", roberta_dir, "--target-modules", "value", "--r", "23")
    assert table.code == 1 and "OVER BUDGET" in table.out and "largest rank that fits: r=22" in table.err


def test_fitting_and_unlimited_configs_exit_0(cli, roberta_dir):
    assert cli("budget", "--model", roberta_dir, "--target-modules", "value", "--r", "22").code == 0
    result = cli("budget", "--model", roberta_dir, "--target-modules", "value", "--r", "23", "--budget", "null")
    assert result.code == 0 and result.err == ""
