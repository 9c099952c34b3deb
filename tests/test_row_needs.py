"""Analysis stages that only some rows need run on those rows only (ReVideo's motion_source: track)."""

from __future__ import annotations

from jobs.edit_videos import EditJobConfig, stage_configs
from pipeline.stage import RunContext
from stages.edit import row_needs
from stages.trajectories import TrajectoryConfig, TrajectoryStage

TRACK = {"method": "revideo", "motion_source": "track", "edit_box": "[0, 0, 64, 64]"}
GIVEN = {"method": "revideo", "trajectories": "[[[1, 1], [5, 5]]]", "edit_box": "[0, 0, 64, 64]"}


def test_revideo_rows_need_tracks_only_with_motion_source_track():
    assert row_needs(TRACK, "trajectories") and not row_needs(GIVEN, "trajectories")
    assert not row_needs({"method": "reencode"}, "trajectories") and not row_needs({"method": "nope"}, "atlas")
    assert not row_needs({**TRACK, "motion_source": "bogus"}, "trajectories")  # the edit stage reports it


def test_stage_pulled_in_by_optional_needs_applies_to_needing_rows_only():
    specs = stage_configs(EditJobConfig(), {"revideo"}, "test")
    traj = [s for s in specs if s.stage_cls is TrajectoryStage]
    assert len(traj) == 1 and traj[0].config.apply_to == "needing"
    assert traj[0].config.store_grid_tracks and traj[0].config.channel_order == "dy,dx"  # revideo's settings
    stage = TrajectoryStage(traj[0].config, RunContext("o", "c"))
    assert stage.applies_to(TRACK) and not stage.applies_to(GIVEN)
    assert not [s for s in stage_configs(EditJobConfig(), {"reencode"}, "test") if s.stage_cls is TrajectoryStage]
    enabled = stage_configs(EditJobConfig(stages={"trajectories": {"enabled": True}}), {"reencode"}, "test")
    assert TrajectoryStage(enabled[0].config, RunContext("o", "c")).applies_to({"method": "reencode"})
    assert TrajectoryConfig().apply_to == "all"  # the trajectory job tracks every row
