// Package chartcheck renders, lints and strictly decodes the Helm chart in
// deploy/helm/tokenpool, offline, with Helm's own Go packages and the
// Kubernetes API types. It is a module of its own so that neither Helm nor
// Kubernetes becomes a dependency of the daemon. Its tests are what CI runs
// (.ci/run).
package chartcheck

import (
	"bytes"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// Object is one rendered manifest, decoded into its API type.
type Object struct {
	Source string // the template it came from
	Kind   string
	Name   string
	Value  any // *appsv1.Deployment, *corev1.Service, ...
}

// Release names the release every render uses.
var Release = chartutil.ReleaseOptions{Name: "tp", Namespace: "tokenpool", Revision: 1, IsInstall: true}

// Render renders the chart in dir with the values of valuesFile over its
// own ("" for the chart's defaults) and returns each manifest file's text,
// by template path; NOTES.txt and partials are left out.
func Render(dir, valuesFile string) (map[string]string, error) {
	c, err := loader.Load(dir)
	if err != nil {
		return nil, err
	}
	vals, err := overrides(valuesFile)
	if err != nil {
		return nil, err
	}
	rv, err := chartutil.ToRenderValues(c, vals, Release, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	out, err := engine.Render(c, rv)
	if err != nil {
		return nil, err
	}
	files := map[string]string{}
	for name, text := range out {
		if ext := filepath.Ext(name); ext == ".yaml" || ext == ".yml" {
			files[name] = text
		}
	}
	return files, nil
}

// Lint runs helm lint on dir with valuesFile's values and returns its
// messages of warning or error severity.
func Lint(dir, valuesFile string) ([]support.Message, error) {
	vals, err := overrides(valuesFile)
	if err != nil {
		return nil, err
	}
	var bad []support.Message
	for _, m := range lint.All(dir, vals, Release.Namespace, false).Messages {
		if m.Severity >= support.WarningSev {
			bad = append(bad, m)
		}
	}
	return bad, nil
}

func overrides(valuesFile string) (chartutil.Values, error) {
	if valuesFile == "" {
		return chartutil.Values{}, nil
	}
	return chartutil.ReadValuesFile(valuesFile)
}

// types maps apiVersion/kind to a new value of its Go type. A kind the
// chart renders must be here: an unknown one fails the decode.
var types = map[string]func() any{
	"apps/v1/Deployment":                      func() any { return new(appsv1.Deployment) },
	"v1/Service":                              func() any { return new(corev1.Service) },
	"v1/ServiceAccount":                       func() any { return new(corev1.ServiceAccount) },
	"v1/ConfigMap":                            func() any { return new(corev1.ConfigMap) },
	"autoscaling/v2/HorizontalPodAutoscaler":  func() any { return new(autoscalingv2.HorizontalPodAutoscaler) },
	"policy/v1/PodDisruptionBudget":           func() any { return new(policyv1.PodDisruptionBudget) },
	"networking.k8s.io/v1/NetworkPolicy":      func() any { return new(networkingv1.NetworkPolicy) },
	"monitoring.coreos.com/v1/ServiceMonitor": func() any { return new(monitoringv1.ServiceMonitor) },
}

// Decode splits the rendered files into documents and decodes each,
// strictly (an unknown or misspelt field is an error), into its API type.
func Decode(files map[string]string) ([]Object, error) {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var objs []Object
	for _, name := range names {
		for i, doc := range splitDocuments(files[name]) {
			var head struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
				Metadata   struct {
					Name string `json:"name"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal(doc, &head); err != nil {
				return nil, fmt.Errorf("%s, document %d: %w", name, i+1, err)
			}
			newValue, ok := types[head.APIVersion+"/"+head.Kind]
			if !ok {
				return nil, fmt.Errorf("%s, document %d: no API type known for %s %s", name, i+1, head.APIVersion, head.Kind)
			}
			v := newValue()
			if err := yaml.UnmarshalStrict(doc, v); err != nil {
				return nil, fmt.Errorf("%s, document %d (%s %s): %w", name, i+1, head.Kind, head.Metadata.Name, err)
			}
			objs = append(objs, Object{Source: name, Kind: head.Kind, Name: head.Metadata.Name, Value: v})
		}
	}
	return objs, nil
}

// splitDocuments returns the YAML documents of text that hold anything
// but comments and blank lines.
func splitDocuments(text string) [][]byte {
	var docs [][]byte
	for _, d := range strings.Split("\n"+text, "\n---") {
		content := false
		for _, line := range strings.Split(d, "\n") {
			if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
				content = true
				break
			}
		}
		if content {
			docs = append(docs, bytes.TrimSpace([]byte(d)))
		}
	}
	return docs
}
