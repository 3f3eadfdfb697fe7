package upstream

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// roundTrip sends one provider call and returns the body of a 2xx answer,
// read up to maxBody. A non-2xx answer is a *StatusError of provider and
// op, with the wait it asks for (retryAfterOf, by now) and a snippet of
// its body with secrets removed. A failed call's error names the URL
// without its query or user, which can carry personal data (Orga's
// ?email=) or a key, as a *url.Error's would.
func roundTrip(client *http.Client, req *http.Request, provider, op string, now time.Time, secrets ...string) ([]byte, error) {
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		u := *req.URL
		u.RawQuery, u.User = "", nil
		return nil, fmt.Errorf("%s: %s: %s %s: %w", provider, op, req.Method, u.String(), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("%s: %s: reading answer: %w", provider, op, err)
	}
	if resp.StatusCode/100 != 2 {
		g := readGoogleError(body)
		return nil, &StatusError{
			Provider: provider, Op: op, Code: resp.StatusCode,
			RetryAfter:  retryAfterOf(resp.Header, g, now),
			Body:        snippet(body, secrets...),
			KeyRejected: g.keyInvalid,
		}
	}
	return body, nil
}
