// Package httpmw adapts bulwark's primitives to net/http.
package httpmw
