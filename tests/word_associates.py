"""One everyday associate per concept word of the paper's list, for measuring offline word choice (Exp 2).

Written once, before measuring either chooser, and not tuned afterwards: the associate is a word
or short phrase a reply might use *instead of* the concept ("sea" for Oceans). Some are
ambiguous among the 50 (e.g. "ice" also fits Snow); that is part of the measure and applies
to every chooser alike.
"""

ASSOCIATES = {
    "dust": "dirt", "satellites": "orbit", "trumpets": "brass band", "origami": "paper folding",
    "illusions": "magic trick", "cameras": "photograph", "lightning": "thunder", "constellations": "stars",
    "treasures": "gold coins", "phones": "calling", "trees": "forest", "avalanches": "snow slide",
    "mirrors": "reflection", "fountains": "water jets", "quarries": "stone pit", "sadness": "tears",
    "xylophones": "mallet percussion", "secrecy": "hidden", "oceans": "sea", "information": "data",
    "deserts": "sand dunes", "kaleidoscopes": "colorful patterns", "sugar": "sweet", "vegetables": "carrots",
    "poetry": "verse", "aquariums": "fish tank", "bags": "purse", "peace": "calm", "caverns": "caves",
    "memories": "remembering", "frosts": "ice", "volcanoes": "lava", "boulders": "rocks", "harmonies": "chords",
    "masquerades": "masks", "rubber": "elastic", "plastic": "polymer", "blood": "veins",
    "amphitheaters": "arena", "contraptions": "gadget", "youths": "teenagers", "dynasties": "emperors",
    "snow": "winter", "dirigibles": "airship", "algorithms": "code", "denim": "jeans",
    "monoliths": "stone pillar", "milk": "dairy", "bread": "loaf", "silver": "metal",
}
