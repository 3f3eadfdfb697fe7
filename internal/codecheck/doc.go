// Package codecheck holds tests of the repository's own code: rules a
// reviewer would otherwise check by hand.
package codecheck
