package codecheck

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// stopsTheTest are the calls that end a test with runtime.Goexit
// (testing: "FailNow must be called from the goroutine running the
// test"), and the repository's test helpers that make them.
var stopsTheTest = map[string]bool{
	"Fatal": true, "Fatalf": true, "FailNow": true, "Skip": true, "Skipf": true, "SkipNow": true,
	"callerJWT": true, "claimsJWT": true, "credential": true, "startDaemon": true, "call": true, "Until": true,
}

// TestNoTestIsStoppedOffItsGoroutine parses every test file and fails on
// a goroutine started in a test that calls one of stopsTheTest: off the
// test's goroutine they end only that goroutine, and the test goes on.
func TestNoTestIsStoppedOffItsGoroutine(t *testing.T) {
	fset := token.NewFileSet()
	files := 0
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != "../.." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "bench-results") {
			return filepath.SkipDir
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		files++
		ast.Inspect(f, func(n ast.Node) bool {
			g, ok := n.(*ast.GoStmt)
			if !ok {
				return true
			}
			lit, ok := g.Call.Fun.(*ast.FuncLit)
			if !ok {
				return true
			}
			ast.Inspect(lit.Body, func(n ast.Node) bool {
				c, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				var name string
				switch fn := c.Fun.(type) {
				case *ast.Ident:
					name = fn.Name
				case *ast.SelectorExpr:
					name = fn.Sel.Name
				}
				if stopsTheTest[name] {
					t.Errorf("%s: %s in a goroutine: it can't stop the test from there", fset.Position(c.Pos()), name)
				}
				return true
			})
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 40 {
		t.Fatalf("only %d test files found: is the walk rooted at the repository?", files)
	}
}
