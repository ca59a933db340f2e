"""`power_from`: the Matter adapter's reading of a node's Power Source clusters (FeatureMap, half-percent charge)."""

from __future__ import annotations

from adapters.matter.adapter import power_from


def test_no_power_source_cluster_is_unknown_not_guessed() -> None:
    assert power_from([]) == (None, None)


def test_battery_feature_gives_battery_and_percent_from_half_percent_units() -> None:
    assert power_from([{"endpoint": 1, "FeatureMap": 0x2, "BatPercentRemaining": 25}]) == ("battery", 12)
    assert power_from([{"endpoint": 1, "FeatureMap": 0x6, "BatPercentRemaining": 200}]) == ("battery", 100)


def test_null_charge_is_unknown_percent() -> None:
    # the controller worker renders the SDK's Null as a non-int; never read as 0 %
    assert power_from([{"endpoint": 1, "FeatureMap": 0x2, "BatPercentRemaining": "Null"}]) == (
        "battery",
        None,
    )
    assert power_from([{"endpoint": 1, "FeatureMap": 0x2}]) == ("battery", None)


def test_wired_source_wins_over_a_backup_battery() -> None:
    sources = [
        {"endpoint": 0, "FeatureMap": 0x1},
        {"endpoint": 1, "FeatureMap": 0x2, "BatPercentRemaining": 10},
    ]
    assert power_from(sources) == ("mains", None)


def test_lowest_of_several_batteries_counts() -> None:
    sources = [
        {"endpoint": 1, "FeatureMap": 0x2, "BatPercentRemaining": 160},
        {"endpoint": 2, "FeatureMap": 0x2, "BatPercentRemaining": 40},
    ]
    assert power_from(sources) == ("battery", 20)


def test_source_without_battery_or_wired_feature_is_unknown() -> None:
    assert power_from([{"endpoint": 1, "FeatureMap": 0}]) == (None, None)
