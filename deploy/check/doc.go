// Package check validates what deploy/ ships: the Helm chart, the plain
// Kubernetes manifests, docker-compose.yml, the Grafana dashboard and the
// Prometheus alert rules, and the PostgreSQL roles the deployment guide
// (docs/deployment.md) prescribes. It is a module of its own so that the
// core does not depend on Helm or the Kubernetes API types.
package check
