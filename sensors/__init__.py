"""Sensors: what makes the graph move by itself."""

from sensors.shard_sensor import shard_sensor

ALL_SENSORS = [shard_sensor]
