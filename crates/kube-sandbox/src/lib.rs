//! kube-sandbox: a loopback Kubernetes API server for tests.
