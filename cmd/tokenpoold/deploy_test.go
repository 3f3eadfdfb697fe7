package main

import (
	"context"
	"encoding/base64"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"go.yaml.in/yaml/v3"
)

// TestComposeFile loads docker-compose.yml as docker compose would (no
// Docker engine runs here) and checks the topology and that every
// replica's environment is a configuration the daemon accepts.
func TestComposeFile(t *testing.T) {
	env := []string{
		"TOKENPOOL_JWT_SECRET=" + testJWTSecret,
		"TOKENPOOL_SEAL_KEYS=" + base64.StdEncoding.EncodeToString(make([]byte, 32)),
	}
	load := func(env []string) (*types.Project, error) {
		opts, err := cli.NewProjectOptions([]string{"../../docker-compose.yml"},
			cli.WithEnv(env), cli.WithWorkingDirectory("../.."), cli.WithName("tokenpool"))
		if err != nil {
			return nil, err
		}
		return opts.LoadProject(context.Background())
	}
	p, err := load(env)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("the secrets are required, not defaulted", func(t *testing.T) {
		if _, err := load(env[:1]); err == nil || !strings.Contains(err.Error(), "TOKENPOOL_SEAL_KEYS") {
			t.Fatalf("loading without TOKENPOOL_SEAL_KEYS: %v", err)
		}
		if _, err := load(env[1:]); err == nil || !strings.Contains(err.Error(), "TOKENPOOL_JWT_SECRET") {
			t.Fatalf("loading without TOKENPOOL_JWT_SECRET: %v", err)
		}
	})

	for _, name := range []string{"redis", "upstream-sim", "tokenpoold-1", "tokenpoold-2", "tokenpoold-3", "lb", "prometheus"} {
		if _, ok := p.Services[name]; !ok {
			t.Fatalf("service %q missing; have %v", name, p.ServiceNames())
		}
	}
	lb := p.Services["lb"]
	lbIP := lb.Networks["pool"].Ipv4Address
	if len(lb.Ports) != 1 || lb.Ports[0].Target != 8080 || lbIP == "" {
		t.Fatalf("lb: ports %+v, address %q", lb.Ports, lbIP)
	}
	conf, err := os.ReadFile("../../deploy/nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	scrapes := prometheusTargets(t, p)

	for i := 1; i <= 3; i++ {
		name := "tokenpoold-" + string(rune('0'+i))
		t.Run(name+" is wired to the shared Redis, the simulator and the load balancer", func(t *testing.T) {
			s := p.Services[name]
			vars := map[string]string{}
			for k, v := range s.Environment {
				if v != nil {
					vars[k] = *v
				}
			}
			if vars["REDIS_URL"] != "redis://redis:6379/0" || !strings.HasPrefix(vars["ORGA_BASE_URL"], "http://upstream-sim:") {
				t.Fatalf("env %v", vars)
			}
			if vars["TOKENPOOL_TRUSTED_PROXIES"] != lbIP {
				t.Fatalf("trusts %q, the load balancer is %q", vars["TOKENPOOL_TRUSTED_PROXIES"], lbIP)
			}
			if _, ok := s.DependsOn["redis"]; !ok {
				t.Fatal("does not wait for redis")
			}
			if s.Build == nil || s.Image != "tokenpool:local" {
				t.Fatalf("build %v image %q", s.Build, s.Image)
			}
			if _, err := LoadConfig(func(k string) string { return vars[k] }, false); err != nil {
				t.Fatalf("the daemon refuses this environment: %v", err)
			}
			if !regexp.MustCompile(`server ` + name + `:8080`).Match(conf) {
				t.Fatalf("deploy/nginx.conf does not balance to %s", name)
			}
			// Metrics: their own port, scraped by Prometheus, never
			// balanced by nginx.
			_, port, err := net.SplitHostPort(vars["TOKENPOOL_METRICS_ADDR"])
			if err != nil || port == "8080" || !scrapes[name+":"+port] {
				t.Fatalf("TOKENPOOL_METRICS_ADDR %q; Prometheus scrapes %v", vars["TOKENPOOL_METRICS_ADDR"], scrapes)
			}
			if strings.Contains(string(conf), ":"+port) {
				t.Fatalf("deploy/nginx.conf reaches the metrics port %s", port)
			}
		})
	}
	if ep := p.Services["upstream-sim"].Entrypoint; len(ep) == 0 || !strings.HasSuffix(ep[0], "/upstream-sim") {
		t.Fatalf("upstream-sim entrypoint %v", ep)
	}
}

// prometheusTargets are the targets of the compose file's Prometheus, from
// the config file it mounts, on /metrics.
func prometheusTargets(t *testing.T, p *types.Project) map[string]bool {
	t.Helper()
	prom := p.Services["prometheus"]
	var file string
	for _, v := range prom.Volumes {
		if v.Target == "/etc/prometheus/prometheus.yml" {
			file = v.Source
		}
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("the Prometheus config: %v", err)
	}
	var cfg struct {
		ScrapeConfigs []struct {
			MetricsPath   string `yaml:"metrics_path"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	targets := map[string]bool{}
	for _, sc := range cfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, tg := range st.Targets {
				targets[tg] = sc.MetricsPath == "" || sc.MetricsPath == "/metrics"
			}
		}
	}
	for _, port := range prom.Ports {
		if port.HostIP != "127.0.0.1" {
			t.Errorf("Prometheus is published on %q; keep it on 127.0.0.1", port.HostIP)
		}
	}
	return targets
}

// TestDockerfile checks what the image promises. CI runs the build line
// itself (.ci/run); no Docker engine runs here.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	froms := regexp.MustCompile(`(?m)^FROM `).FindAllStringIndex(df, -1)
	if len(froms) < 2 {
		t.Fatal("not a multi-stage build")
	}
	final := df[froms[len(froms)-1][0]:]
	build := regexp.MustCompile(`(?m)^# ci: build command.*\nRUN (.+)$`).FindStringSubmatch(df)
	checks := []struct {
		what string
		ok   bool
	}{
		{"a marked build line for CI", build != nil},
		{"a static build (CGO_ENABLED=0)", build != nil && strings.Contains(build[1], "CGO_ENABLED=0")},
		{"both binaries built", build != nil && strings.Contains(build[1], "./cmd/tokenpoold") && strings.Contains(build[1], "./cmd/upstream-sim")},
		{"a non-root final user", regexp.MustCompile(`(?m)^USER nonroot`).MatchString(final)},
		{"a small final image without a toolchain", strings.Contains(final, "distroless/static")},
		{"the API's port exposed, and only it", regexp.MustCompile(`(?m)^EXPOSE 8080$`).MatchString(final)},
		{"metrics on their own port in a container", regexp.MustCompile(`(?m)^ENV .*TOKENPOOL_METRICS_ADDR=:9464`).MatchString(final)},
		{"a health check using -healthcheck", strings.Contains(final, `"-healthcheck"`)},
		{"tokenpoold as the entrypoint", strings.Contains(final, `ENTRYPOINT ["/usr/local/bin/tokenpoold"]`)},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("Dockerfile lacks %s", c.what)
		}
	}
}
