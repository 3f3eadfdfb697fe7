package main

import (
	"fmt"
	"time"
)

// Scenario is a request rate over time: the arrival schedule of an
// open-loop run.
type Scenario struct {
	Name     string
	Duration time.Duration
	// Rate is requests per second t after the start.
	Rate func(t time.Duration) float64
	// Describe says it in words, for reports.
	Describe string
}

// ScenarioFlags are the knobs of every scenario.
type ScenarioFlags struct {
	Name                 string
	Rate, From, To       float64
	Duration             time.Duration
	StepAt               time.Duration
	SpikeAt, SpikeLength time.Duration
	SpikeRate            float64
	IdleAfter            time.Duration // steady: stop sending after this, then idle to Duration
	MaxConcurrency       int           // max: closed-loop workers
}

// Build returns the scenario the flags describe.
func (f ScenarioFlags) Build() (Scenario, error) {
	if f.Duration <= 0 {
		return Scenario{}, fmt.Errorf("-duration must be positive")
	}
	s := Scenario{Name: f.Name, Duration: f.Duration}
	switch f.Name {
	case "steady":
		if f.Rate <= 0 {
			return s, fmt.Errorf("steady: -rate must be positive")
		}
		idle := f.IdleAfter
		s.Rate = func(t time.Duration) float64 {
			if idle > 0 && t >= idle {
				return 0
			}
			return f.Rate
		}
		s.Describe = fmt.Sprintf("steady %.0f/s for %v", f.Rate, f.Duration)
		if idle > 0 {
			s.Describe = fmt.Sprintf("steady %.0f/s for %v, then idle to %v", f.Rate, idle, f.Duration)
		}
	case "step":
		s.Rate = func(t time.Duration) float64 {
			if t < f.StepAt {
				return f.From
			}
			return f.Rate
		}
		s.Describe = fmt.Sprintf("step %.0f → %.0f/s at %v, for %v", f.From, f.Rate, f.StepAt, f.Duration)
	case "spike":
		s.Rate = func(t time.Duration) float64 {
			if t >= f.SpikeAt && t < f.SpikeAt+f.SpikeLength {
				return f.SpikeRate
			}
			return f.Rate
		}
		s.Describe = fmt.Sprintf("%.0f/s with a spike to %.0f/s at %v for %v, for %v", f.Rate, f.SpikeRate, f.SpikeAt, f.SpikeLength, f.Duration)
	case "ramp":
		d := f.Duration
		s.Rate = func(t time.Duration) float64 {
			return f.From + (f.To-f.From)*min(t.Seconds()/d.Seconds(), 1)
		}
		s.Describe = fmt.Sprintf("ramp %.0f → %.0f/s over %v", f.From, f.To, f.Duration)
	case "max":
		if f.MaxConcurrency <= 0 {
			return s, fmt.Errorf("max: -concurrency must be positive")
		}
		s.Describe = fmt.Sprintf("closed loop, %d concurrent callers, for %v", f.MaxConcurrency, f.Duration)
	default:
		return s, fmt.Errorf("unknown scenario %q (steady, step, spike, ramp, max)", f.Name)
	}
	return s, nil
}
