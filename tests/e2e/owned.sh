# shellcheck shell=bash
# Sourced by tests/e2e/kind.sh (and checked by operator/tests/render.rs): the objects a Stoa
# owns, as `kind/name`, taken from `stoa-operator render` of the same manifest, so the
# suite names them as the operator does and never from a list of its own.
#
#   stoa-operator render -f stoa.yaml | owned_objects
owned_objects() {
  # The render prints `# <Kind> <name>: applied ...` before each object it applies. Jobs
  # are history, not owned state; the signing-key Secret is announced on its own line.
  sed -n 's/^# \([A-Za-z]*\) \([a-z0-9.-]*\): applied.*/\1\/\2/p' | grep -v '^Job/' || true
}
