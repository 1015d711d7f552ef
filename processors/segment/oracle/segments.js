// Reads a JSON array of message bodies on stdin; prints, for each, the encoding,
// the segment count and the units (graphemes) the count packs, as Twilio's own
// calculator (sms-segments-calculator, from TwilioDevEd/message-segment-calculator)
// computes them, without Smart Encoding.
const { SegmentedMessage } = require('sms-segments-calculator');

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const out = JSON.parse(input).map((text) => {
    const m = new SegmentedMessage(text, 'auto', false);
    return { encoding: m.encodingName, segments: m.segmentsCount, units: m.graphemes };
  });
  process.stdout.write(JSON.stringify(out));
});
