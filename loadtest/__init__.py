"""Load test (Locust) and benchmark (wrk + gRPC client) of the weather-tweet pipeline."""
