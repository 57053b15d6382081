"""Grafana as code: the weather dashboard and Ray's own dashboards, generated for provisioning."""
