package codecheck

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/tokenpool/tokenpool/"

// moduleImports maps each of the module's packages (by its path below the
// module, "pool", "upstream/upstreamtest") to the module's packages its
// non-test files import.
func moduleImports(tb testing.TB) map[string][]string {
	tb.Helper()
	fset := token.NewFileSet()
	graph := map[string][]string{}
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != "../.." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "deploy") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		pkg, _ := filepath.Rel("../..", filepath.Dir(path))
		pkg = filepath.ToSlash(pkg)
		if _, ok := graph[pkg]; !ok {
			graph[pkg] = nil
		}
		for _, is := range f.Imports {
			p, _ := strconv.Unquote(is.Path.Value)
			if dep, ok := strings.CutPrefix(p, module); ok && !slices.Contains(graph[pkg], dep) {
				graph[pkg] = append(graph[pkg], dep)
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return graph
}

// reaches returns every module package pkg imports, directly or not.
func reaches(graph map[string][]string, pkg string) []string {
	seen := map[string]bool{}
	var visit func(string)
	visit = func(p string) {
		for _, d := range graph[p] {
			if !seen[d] {
				seen[d] = true
				visit(d)
			}
		}
	}
	visit(pkg)
	var out []string
	for p := range seen {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// TestTheContractIsALeaf keeps the packages apart, as database/sql and
// its drivers are: mint, the contract the pool, the providers and the
// API share, imports none of the module; the pool and the API reach no
// provider code, and provider code (upstream and below) reaches no pool
// or API code.
func TestTheContractIsALeaf(t *testing.T) {
	graph := moduleImports(t)
	for _, want := range []string{"mint", "pool", "api", "upstream", "upstream/upstreamtest"} {
		if _, ok := graph[want]; !ok {
			t.Fatalf("no package %q found: the walk is wrong", want)
		}
	}
	if deps := graph["mint"]; len(deps) > 0 {
		t.Errorf("mint imports %v: the contract must import none of the module", deps)
	}
	forbidden := func(pkg string, bad func(dep string) bool, why string) {
		for _, dep := range reaches(graph, pkg) {
			if bad(dep) {
				t.Errorf("%s reaches %s: %s", pkg, dep, why)
			}
		}
	}
	provider := func(dep string) bool { return dep == "upstream" || strings.HasPrefix(dep, "upstream/") }
	forbidden("pool", provider, "the pool imports no provider code")
	forbidden("api", provider, "the API imports no provider code; what it shares with them is in mint")
	for pkg := range graph {
		if provider(pkg) {
			forbidden(pkg, func(dep string) bool { return dep == "pool" || dep == "api" }, "provider code imports no pool or API code")
		}
	}
}
