#!/bin/sh
# InfluxDB 2 first-start hook: map the InfluxQL database "$INFLUX_DB" (retention policy autogen)
# onto the bucket, so Grafana's InfluxQL datasource and `/query` work against InfluxDB 2.
set -e
bucket_id=$(influx bucket list --name "$DOCKER_INFLUXDB_INIT_BUCKET" --hide-headers | cut -f1)
influx v1 dbrp create --db "$INFLUX_DB" --rp autogen --bucket-id "$bucket_id" --default
