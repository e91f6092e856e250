// Etsy StatsD backend for the benchmark: keeps the cumulative totals of every flush and writes them
// to `config.benchOut` as JSON (the management port's `counters` resets at every flush, so it cannot
// count a run). Counters and timer counts add up; gauges keep their last value.
const fs = require('fs');

exports.init = function (startupTime, config, events) {
  const out = config.benchOut;
  const totals = { counters: {}, timer_counters: {}, gauges: {} };
  const add = function (into, from) {
    for (const key in from) {
      into[key] = (into[key] || 0) + from[key];
    }
  };
  events.on('flush', function (timestamp, metrics) {
    add(totals.counters, metrics.counters);
    add(totals.timer_counters, metrics.timer_counters);
    Object.assign(totals.gauges, metrics.gauges);
    fs.writeFileSync(out + '.tmp', JSON.stringify(totals));
    fs.renameSync(out + '.tmp', out);  // readers never see half a file
  });
  return true;
};
