"""Kubernetes (KubeRay) deployment helpers: render the RayService's serveConfigV2, make secrets."""
