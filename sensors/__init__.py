"""Sensors: what makes the graph move by itself."""

from sensors.eval_sensors import checkpoint_eval_sensor, eval_regression_sensor, run_failure_sensor
from sensors.shard_sensor import shard_sensor

ALL_SENSORS = [shard_sensor, checkpoint_eval_sensor, eval_regression_sensor, run_failure_sensor]
